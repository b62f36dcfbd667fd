// CPU twin of csrc/cuda/assignment_cuda.cu: exact rectangular linear assignment by shortest
// augmenting paths (Jonker-Volgenant family, Dijkstra on reduced costs), one problem per OpenMP
// thread. Costs are read in their own dtype; potentials and path lengths are kept in double so
// float32 inputs are solved exactly w.r.t. their float32 values.
//
// Square problems first get column potentials from an eps-scaling forward auction (as on the
// GPU), then a tight greedy assignment and the exact Dijkstra finish; rectangular ones go straight
// to greedy row reduction. On structured instances (e.g. squared distances between two
// differently shaped 2-D clouds, what OT-CFM solves every step) the optimal potentials are far
// from v = 0 and the plain path needs long augmenting paths; the auction gets them close at a
// fraction of the cost. Costs with few distinct values (integer-valued) keep the plain path
// (greedy, augmenting row reduction, Dijkstra): there exact ties make most augmenting paths one
// edge long, while auction prices break the ties and leave long near-zero-cost paths.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "cpu/cpu_features.h"
#include "flowfast/assignment.h"

namespace ff {
namespace {

constexpr int kArrPasses = 2;  // Jonker-Volgenant's choice; more passes measured no faster

// Auction warm start (square problems). Eps is relative to the cost range. The final eps trades
// bids against Dijkstra work: a coarser one leaves more rows and longer paths to Dijkstra, whose
// steps cost O(m) each, so it shrinks with n; kFinalEpsScale / n^2 was the best of the schedules
// measured on squared-distance instances with n = 16..2048 (2-D and 784-D), and the start and
// factor mattered little. Below kAuctionMinN the plain path is faster.
constexpr int64_t kAuctionMinN = 16;
constexpr double kEpsStart = 0.05;
constexpr double kEpsFactor = 4.0;
constexpr double kFinalEpsScale = 10.0;
constexpr double kMinFinalEps = 1e-7;  // about float resolution: the shortlist scan is float32
constexpr int64_t kBidsPerRow = 256;   // a safety net (typical: 5 to 60); past it the prices so far are used
constexpr int kValueProbeRows = 32;
constexpr int64_t kProbeSmallest = 16;       // a probed row's best candidates (auction_prices_resolve)
constexpr double kMinGapOverRange = 1e-11;   // closer candidates need the plain path's precision

// A row's auction shortlist: some columns with their costs, and a lower bound `theta` on
// h_j = (sign*c_j - lo) - v_j over the columns not listed (lo: the smallest sign*c, so shifted
// costs lie in [0, range] and h stays exact to the costs' own resolution at any offset). Auction
// prices only rise (v only falls), so the bound stays valid, and a bid whose two best listed values
// are <= theta needs no scan of the whole row. Most bids after the first eps phases are served so.
constexpr int kShortlistMax = 24;
struct Shortlist {
  alignas(32) double cost[kShortlistMax];  // sign*c_j - lo of the listed columns; +inf pads
  alignas(32) int64_t col[kShortlistMax];
  double theta;
  int count;  // -1: not built yet
};

struct Bid {
  double best, second;
  int64_t col;
};

// One problem's state (potentials u, v; the matching col4row/row4col) and scratch; reused across
// the problems a thread solves.
struct SapWorkspace {
  std::vector<double> u, v, shortest, v_masked, settled_label;
  std::vector<int64_t> col4row, row4col, path, settled_cols, visited_rows;
  std::vector<int64_t> stack, argmin;
  std::vector<float> v32;
  std::vector<Shortlist> lists;

  void reset(int64_t n, int64_t m) {
    u.assign(n, 0.0);
    v.assign(m, 0.0);
    shortest.assign(m, 0.0);
    v_masked.assign(m, 0.0);
    settled_label.assign(m, 0.0);
    col4row.assign(n, -1);
    row4col.assign(m, -1);
    path.assign(m, -1);
    settled_cols.clear();
    settled_cols.reserve(m);
    visited_rows.clear();
    visited_rows.reserve(n);
  }
};

// One Dijkstra step over a cost row: relabel label[j] = min(label[j], base + sign*c_j - v_j),
// recording the row in path[j] where it improved, and return the smallest label. The AVX2
// version is chosen at run time; both compute the same expression in the same order.
template <typename T>
double scan_row_scalar(const T* row, double sign, double base, const double* v, double* label, int64_t* path,
                       int64_t i, int64_t m) {
  double lowest = std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < m; ++j) {
    const double r = (base + sign * static_cast<double>(row[j])) - v[j];
    const double old = label[j];
    const bool improves = r < old;
    const double l = improves ? r : old;
    label[j] = l;
    path[j] = improves ? i : path[j];
    lowest = l < lowest ? l : lowest;
  }
  return lowest;
}

// First column whose label equals `lowest`, preferring a free one (it ends the search).
inline int64_t find_label_scalar(const double* label, double lowest, const int64_t* row4col, int64_t from,
                                 int64_t m, int64_t first) {
  for (int64_t j = from; j < m; ++j) {
    if (label[j] == lowest) {
      if (row4col[j] < 0) return j;
      if (first < 0) first = j;
    }
  }
  return first;
}

// Smallest and second-smallest of h_j = sign*c_j - v_j and the first column attaining the
// smallest. Ties count twice (second == best).
template <typename T>
Bid top2_scalar(const T* row, double sign, const double* v, int64_t m) {
  const double inf = std::numeric_limits<double>::infinity();
  Bid t{inf, inf, 0};
  for (int64_t j = 0; j < m; ++j) {
    const double h = sign * static_cast<double>(row[j]) - v[j];
    if (h < t.second) {
      if (h < t.best) {
        t.second = t.best;
        t.best = h;
        t.col = j;
      } else {
        t.second = h;
      }
    }
  }
  return t;
}

// Range of a cost matrix; false when some entry is NaN or infinite.
template <typename T>
bool cost_bounds_scalar(const T* p, int64_t n, int64_t m, int64_t stride, double& lo, double& hi) {
  lo = std::numeric_limits<double>::infinity();
  hi = -lo;
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < m; ++j) {
      const double x = static_cast<double>(p[i * stride + j]);
      if (!std::isfinite(x)) return false;
      lo = std::min(lo, x);
      hi = std::max(hi, x);
    }
  }
  return true;
}

// Shortlist fallback: the two best columns, theta = the third best value.
template <typename T>
void shortlist_scalar(const T* row, double sign, double lo, const double* v, int64_t m, Shortlist& s) {
  const double inf = std::numeric_limits<double>::infinity();
  double b1 = inf, b2 = inf, b3 = inf;
  int64_t c1 = 0, c2 = 0;
  for (int64_t j = 0; j < m; ++j) {
    const double h = (sign * static_cast<double>(row[j]) - lo) - v[j];
    if (h < b3) {
      if (h < b2) {
        b3 = b2;
        if (h < b1) {
          b2 = b1;
          c2 = c1;
          b1 = h;
          c1 = j;
        } else {
          b2 = h;
          c2 = j;
        }
      } else {
        b3 = h;
      }
    }
  }
  s.count = m < 2 ? static_cast<int>(m) : 2;
  s.col[0] = c1;
  s.col[1] = c2;
  s.theta = b3;
}

// After a scan has set col[0, count): cache the listed (shifted) costs and pad with +inf.
template <typename T>
void finish_shortlist(const T* row, double sign, double lo, Shortlist& s) {
  for (int k = 0; k < s.count; ++k) s.cost[k] = sign * static_cast<double>(row[s.col[k]]) - lo;
  for (int k = s.count; k < kShortlistMax; ++k) {
    s.cost[k] = std::numeric_limits<double>::infinity();
    s.col[k] = 0;
  }
}

inline Bid evaluate_shortlist_scalar(const Shortlist& s, const double* v) {
  const double inf = std::numeric_limits<double>::infinity();
  Bid b{inf, inf, 0};
  for (int k = 0; k < s.count; ++k) {
    const double h = s.cost[k] - v[s.col[k]];
    if (h < b.second) {
      if (h < b.best) {
        b.second = b.best;
        b.best = h;
        b.col = s.col[k];
      } else {
        b.second = h;
      }
    }
  }
  return b;
}

#if defined(FF_CPU_X86_SIMD)
#define FF_HAVE_AVX2_PATH 1
__attribute__((target("avx2"))) inline __m256d load4(const double* p) { return _mm256_loadu_pd(p); }
__attribute__((target("avx2"))) inline __m256d load4(const float* p) { return _mm256_cvtps_pd(_mm_loadu_ps(p)); }

template <typename T>
__attribute__((target("avx2"))) double scan_row_avx2(const T* row, double sign, double base, const double* v,
                                                     double* label, int64_t* path, int64_t i, int64_t m) {
  const __m256d vbase = _mm256_set1_pd(base), vsign = _mm256_set1_pd(sign);
  const __m256d vrow = _mm256_castsi256_pd(_mm256_set1_epi64x(i));
  __m256d vlow = _mm256_set1_pd(std::numeric_limits<double>::infinity());
  int64_t j = 0;
  for (; j + 4 <= m; j += 4) {
    const __m256d r = _mm256_sub_pd(_mm256_add_pd(vbase, _mm256_mul_pd(vsign, load4(row + j))), _mm256_loadu_pd(v + j));
    const __m256d old = _mm256_loadu_pd(label + j);
    const __m256d improves = _mm256_cmp_pd(r, old, _CMP_LT_OQ);
    const __m256d l = _mm256_blendv_pd(old, r, improves);
    _mm256_storeu_pd(label + j, l);
    double* path_j = reinterpret_cast<double*>(path + j);
    _mm256_storeu_pd(path_j, _mm256_blendv_pd(_mm256_loadu_pd(path_j), vrow, improves));
    vlow = _mm256_min_pd(vlow, l);
  }
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, vlow);
  double lowest = std::min(std::min(lanes[0], lanes[1]), std::min(lanes[2], lanes[3]));
  const double tail = scan_row_scalar(row + j, sign, base, v + j, label + j, path + j, i, m - j);
  return std::min(lowest, tail);
}

__attribute__((target("avx2"))) inline int64_t find_label_avx2(const double* label, double lowest,
                                                               const int64_t* row4col, int64_t m) {
  const __m256d target = _mm256_set1_pd(lowest);
  int64_t first = -1, j = 0;
  for (; j + 4 <= m; j += 4) {
    int mask = _mm256_movemask_pd(_mm256_cmp_pd(_mm256_loadu_pd(label + j), target, _CMP_EQ_OQ));
    while (mask) {
      const int lane = __builtin_ctz(mask);
      mask &= mask - 1;
      if (row4col[j + lane] < 0) return j + lane;
      if (first < 0) first = j + lane;
    }
  }
  return find_label_scalar(label, lowest, row4col, j, m, first);
}

template <typename T>
__attribute__((target("avx2"))) Bid top2_avx2(const T* row, double sign, const double* v, int64_t m) {
  const double inf = std::numeric_limits<double>::infinity();
  const __m256d vsign = _mm256_set1_pd(sign), step = _mm256_set1_pd(4.0);
  __m256d b1 = _mm256_set1_pd(inf), b2 = b1, idx = _mm256_setr_pd(0.0, 1.0, 2.0, 3.0), best_idx = idx;
  int64_t j = 0;
  for (; j + 4 <= m; j += 4) {
    const __m256d h = _mm256_sub_pd(_mm256_mul_pd(vsign, load4(row + j)), _mm256_loadu_pd(v + j));
    const __m256d lower = _mm256_cmp_pd(h, b1, _CMP_LT_OQ);
    b2 = _mm256_min_pd(b2, _mm256_max_pd(b1, h));
    b1 = _mm256_blendv_pd(b1, h, lower);
    best_idx = _mm256_blendv_pd(best_idx, idx, lower);
    idx = _mm256_add_pd(idx, step);
  }
  alignas(32) double l1[4], l2[4], li[4];
  _mm256_store_pd(l1, b1);
  _mm256_store_pd(l2, b2);
  _mm256_store_pd(li, best_idx);
  Bid t = top2_scalar(row + j, sign, v + j, m - j);
  t.col += j;
  for (int k = 0; k < 4; ++k) {
    const int64_t col = static_cast<int64_t>(li[k]);
    if (l1[k] < t.best || (l1[k] == t.best && col < t.col)) {
      t.second = std::min(t.best, t.second);
      t.best = l1[k];
      t.col = col;
    } else {
      t.second = std::min(t.second, l1[k]);
    }
    t.second = std::min(t.second, l2[k]);
  }
  return t;
}

template <typename T>
__attribute__((target("avx2"))) bool cost_bounds_avx2(const T* p, int64_t n, int64_t m, int64_t stride, double& lo,
                                                      double& hi) {
  const __m256d big = _mm256_set1_pd(std::numeric_limits<double>::max());
  const __m256d abs_mask = _mm256_castsi256_pd(_mm256_set1_epi64x(0x7fffffffffffffffLL));
  __m256d vlo = _mm256_set1_pd(std::numeric_limits<double>::infinity());
  __m256d vhi = _mm256_set1_pd(-std::numeric_limits<double>::infinity());
  __m256d ok = _mm256_castsi256_pd(_mm256_set1_epi64x(-1));
  double tlo, thi;
  lo = std::numeric_limits<double>::infinity();
  hi = -lo;
  for (int64_t i = 0; i < n; ++i) {
    const T* row = p + i * stride;
    int64_t j = 0;
    for (; j + 4 <= m; j += 4) {
      const __m256d x = load4(row + j);
      ok = _mm256_and_pd(ok, _mm256_cmp_pd(_mm256_and_pd(x, abs_mask), big, _CMP_LE_OQ));  // false for NaN too
      vlo = _mm256_min_pd(vlo, x);
      vhi = _mm256_max_pd(vhi, x);
    }
    if (j < m) {
      if (!cost_bounds_scalar(row + j, 1, m - j, 0, tlo, thi)) return false;
      lo = std::min(lo, tlo);
      hi = std::max(hi, thi);
    }
  }
  if (_mm256_movemask_pd(ok) != 0xf) return false;
  alignas(32) double l[4], h[4];
  _mm256_store_pd(l, vlo);
  _mm256_store_pd(h, vhi);
  for (int k = 0; k < 4; ++k) {
    lo = std::min(lo, l[k]);
    hi = std::max(hi, h[k]);
  }
  return true;
}

// Eight costs as float, normalized: (c - shift) * scale, computed in double for double input.
__attribute__((target("avx2"))) inline __m256 load8_normalized(const float* p, __m256d, __m256d, __m256 shift,
                                                               __m256 scale) {
  return _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(p), shift), scale);
}
__attribute__((target("avx2"))) inline __m256 load8_normalized(const double* p, __m256d shift, __m256d scale,
                                                               __m256, __m256) {
  const __m128 lo = _mm256_cvtpd_ps(_mm256_mul_pd(_mm256_sub_pd(_mm256_loadu_pd(p), shift), scale));
  const __m128 hi = _mm256_cvtpd_ps(_mm256_mul_pd(_mm256_sub_pd(_mm256_loadu_pd(p + 4), shift), scale));
  return _mm256_set_m128(hi, lo);
}

// Shortlist scan in float, eight lanes: per lane (j mod 8) the two smallest normalized h with
// their columns and the third smallest; the 16 listed columns plus the < 8 tail columns form the
// shortlist, and the smallest third, mapped back, is theta. Normalizing by the cost range keeps
// h and v32 = v * scale O(1) whatever the offset or magnitude of the costs. Only the choice of
// listed columns and theta see float rounding, so they are approximate: listed values are
// recomputed exactly in double, and an approximate theta only makes a bid slightly less sharp.
// Needs m < 2^31.
template <typename T>
__attribute__((target("avx2"))) void shortlist_avx2(const T* row, double shift, double scale, const float* v32,
                                                    int64_t m, Shortlist& s) {
  const float inf = std::numeric_limits<float>::infinity();
  const __m256d shift_d = _mm256_set1_pd(shift), scale_d = _mm256_set1_pd(scale);
  const __m256 shift_f = _mm256_set1_ps(static_cast<float>(shift)), scale_f = _mm256_set1_ps(static_cast<float>(scale));
  const __m256i step = _mm256_set1_epi32(8);
  __m256 b1 = _mm256_set1_ps(inf), b2 = b1, b3 = b1;
  __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), i1 = idx, i2 = idx;
  int64_t j = 0;
  for (; j + 8 <= m; j += 8) {
    const __m256 h = _mm256_sub_ps(load8_normalized(row + j, shift_d, scale_d, shift_f, scale_f), _mm256_loadu_ps(v32 + j));
    const __m256 lt1 = _mm256_cmp_ps(h, b1, _CMP_LT_OQ);
    const __m256 lt2 = _mm256_cmp_ps(h, b2, _CMP_LT_OQ);
    b3 = _mm256_min_ps(b3, _mm256_max_ps(b2, h));
    // h < b1 pushes (b1, i1) down to slot 2; b1 <= h < b2 replaces slot 2.
    b2 = _mm256_blendv_ps(_mm256_blendv_ps(b2, h, lt2), b1, lt1);
    const __m256 fi1 = _mm256_castsi256_ps(i1), fidx = _mm256_castsi256_ps(idx);
    i2 = _mm256_castps_si256(_mm256_blendv_ps(_mm256_blendv_ps(_mm256_castsi256_ps(i2), fidx, lt2), fi1, lt1));
    b1 = _mm256_blendv_ps(b1, h, lt1);
    i1 = _mm256_castps_si256(_mm256_blendv_ps(fi1, fidx, lt1));
    idx = _mm256_add_epi32(idx, step);
  }
  alignas(32) float l3[8];
  alignas(32) int32_t c1[8], c2[8];
  _mm256_store_ps(l3, b3);
  _mm256_store_si256(reinterpret_cast<__m256i*>(c1), i1);
  _mm256_store_si256(reinterpret_cast<__m256i*>(c2), i2);
  s.count = 0;
  if (j >= 16) {
    float t = l3[0];
    for (int k = 1; k < 8; ++k) t = std::min(t, l3[k]);
    s.theta = t;  // normalized; the caller maps it back
    for (int k = 0; k < 8; ++k) {
      s.col[s.count++] = c1[k];
      s.col[s.count++] = c2[k];
    }
  } else {  // fewer than two columns per lane: list them all
    s.theta = std::numeric_limits<double>::infinity();
    for (int64_t k = 0; k < j; ++k) s.col[s.count++] = k;
  }
  for (; j < m; ++j) s.col[s.count++] = j;
}

__attribute__((target("avx2"))) inline void merge_top2(__m256d& b, __m256d& s, __m256d ob, __m256d os) {
  s = _mm256_min_pd(_mm256_max_pd(b, ob), _mm256_min_pd(s, os));
  b = _mm256_min_pd(b, ob);
}

// Branch-free: the listed columns' current values by gather, then a top-2 merge network.
__attribute__((target("avx2"))) inline Bid evaluate_shortlist_avx2(const Shortlist& s, const double* v) {
  const int vectors = (s.count + 3) / 4;
  __m256d h[kShortlistMax / 4];
  const __m256d inf = _mm256_set1_pd(std::numeric_limits<double>::infinity());
  __m256d b = inf, sec = inf;
  for (int q = 0; q < vectors; ++q) {
    const __m256i cols = _mm256_load_si256(reinterpret_cast<const __m256i*>(s.col + 4 * q));
    h[q] = _mm256_sub_pd(_mm256_load_pd(s.cost + 4 * q), _mm256_i64gather_pd(v, cols, 8));
    sec = _mm256_min_pd(sec, _mm256_max_pd(b, h[q]));
    b = _mm256_min_pd(b, h[q]);
  }
  merge_top2(b, sec, _mm256_permute_pd(b, 0x5), _mm256_permute_pd(sec, 0x5));
  merge_top2(b, sec, _mm256_permute2f128_pd(b, b, 0x01), _mm256_permute2f128_pd(sec, sec, 0x01));
  Bid out;
  out.best = _mm256_cvtsd_f64(b);
  out.second = _mm256_cvtsd_f64(sec);
  out.col = s.col[0];
  for (int q = 0; q < vectors; ++q) {
    const int mask = _mm256_movemask_pd(_mm256_cmp_pd(h[q], b, _CMP_EQ_OQ));
    if (mask) {
      out.col = s.col[4 * q + __builtin_ctz(mask)];
      break;
    }
  }
  return out;
}

#endif

template <typename T>
double scan_row(const T* row, double sign, double base, const double* v, double* label, int64_t* path, int64_t i,
                int64_t m) {
#if defined(FF_HAVE_AVX2_PATH)
  if (cpu::has_avx2()) return scan_row_avx2(row, sign, base, v, label, path, i, m);
#endif
  return scan_row_scalar(row, sign, base, v, label, path, i, m);
}

inline int64_t find_label(const double* label, double lowest, const int64_t* row4col, int64_t m) {
#if defined(FF_HAVE_AVX2_PATH)
  if (cpu::has_avx2()) return find_label_avx2(label, lowest, row4col, m);
#endif
  return find_label_scalar(label, lowest, row4col, 0, m, -1);
}

template <typename T>
Bid top2(const T* row, double sign, const double* v, int64_t m) {
#if defined(FF_HAVE_AVX2_PATH)
  if (cpu::has_avx2()) return top2_avx2(row, sign, v, m);
#endif
  return top2_scalar(row, sign, v, m);
}

template <typename T>
bool cost_bounds(const T* p, int64_t n, int64_t m, int64_t stride, double& lo, double& hi) {
#if defined(FF_HAVE_AVX2_PATH)
  if (cpu::has_avx2()) return cost_bounds_avx2(p, n, m, stride, lo, hi);
#endif
  return cost_bounds_scalar(p, n, m, stride, lo, hi);
}

// Shortlist of h_j = (sign*c_j - lo) - v_j. The float scan reads it through
// v32_j = float(v_j * scale) (normalized prices, see shortlist_avx2); `fast` says the caller
// keeps v32 and the range suits float.
template <typename T>
void build_shortlist(const T* row, double sign, double lo, double scale, const double* v, const float* v32, bool fast,
                     int64_t m, Shortlist& s) {
#if defined(FF_HAVE_AVX2_PATH)
  if (fast && cpu::has_avx2()) {
    // h * scale = (c - sign*lo) * (sign*scale) - v * scale.
    shortlist_avx2(row, sign * lo, sign * scale, v32, m, s);
    s.theta /= scale;
    finish_shortlist(row, sign, lo, s);
    return;
  }
#endif
  (void)scale;
  (void)v32;
  (void)fast;
  shortlist_scalar(row, sign, lo, v, m, s);
  finish_shortlist(row, sign, lo, s);
}

inline Bid evaluate_shortlist(const Shortlist& s, const double* v) {
#if defined(FF_HAVE_AVX2_PATH)
  if (cpu::has_avx2()) return evaluate_shortlist_avx2(s, v);
#endif
  return evaluate_shortlist_scalar(s, v);
}

// The cost matrix as every step reads it: entry (i, j) is sign * c_ij, so maximizing is
// minimizing -c.
template <typename T>
struct SignedCosts {
  const T* data;
  int64_t n, m, row_stride;
  double sign;

  const T* row(int64_t i) const { return data + i * row_stride; }
  double operator()(int64_t i, int64_t j) const { return sign * static_cast<double>(data[i * row_stride + j]); }
};

inline double final_auction_eps(int64_t rows, double range) {
  const double n = static_cast<double>(rows);
  return std::max(kFinalEpsScale / (n * n), kMinFinalEps) * range;
}

// Whether auction prices can be trusted here. They end within eps_final of optimal and of the
// range's magnitude, so c - v in double keeps the costs' digits only down to ~1e-16 range:
//  - precision: if two of a row's best candidates differ by less than kMinGapOverRange * range
//    (tiny costs next to a unit-scale range, clusters of near-duplicate points, a bimodal cost
//    whose low mode is 1e12 below the high one), the Dijkstra on such reduced costs would pick
//    among them by rounding; the plain path's potentials only move by reduced costs along actual
//    augmenting paths and keep those digits. Checked on every row's two best (one vector pass)
//    and on kValueProbeRows sampled rows' kProbeSmallest best.
//  - use: if some sampled row's best candidates lie within eps_final of each other (huge
//    outliers set the range, rows on very different scales), the prices carry no information
//    there and the auction is pure cost.
// What remains is rounding of ~n ulp(range) in the total: structure finer than that which no
// row's two best nor the sampled rows show (e.g. an additive x_i + y_j cost plus 1e-12 range
// noise) is resolved only to that level.
template <typename T>
bool auction_prices_resolve(const SignedCosts<T>& c, double lo, double range, double eps_final, SapWorkspace& ws) {
  const double min_gap = kMinGapOverRange * range;
  for (int64_t i = 0; i < c.n; ++i) {
    const Bid t = top2(c.row(i), c.sign, ws.v.data(), c.m);  // v = 0 here
    const double gap = t.second - t.best;
    if (gap > 0.0 && gap < min_gap) return false;  // exact ties are harmless: any choice is optimal
  }
  const int64_t probes = std::min<int64_t>(kValueProbeRows, c.n);
  const int64_t k = std::min<int64_t>(kProbeSmallest, c.m);
  auto& row = ws.shortest;  // scratch: augment_from refills it before every use
  row.resize(static_cast<size_t>(c.m));
  for (int64_t q = 0; q < probes; ++q) {
    const int64_t i = q * c.n / probes;
    for (int64_t j = 0; j < c.m; ++j) row[static_cast<size_t>(j)] = c(i, j) - lo;
    std::partial_sort(row.begin(), row.begin() + k, row.end());
    if (row[static_cast<size_t>(k - 1)] - row[0] < eps_final) return false;
    for (int64_t j = 1; j < k; ++j) {
      const double gap = row[static_cast<size_t>(j)] - row[static_cast<size_t>(j - 1)];
      if (gap > 0.0 && gap < min_gap) return false;
    }
  }
  return true;
}

// Whether the costs take few distinct values (integer-valued costs, grid distances): in many
// sampled rows the entry at some column recurs at another column. The plain path is the faster
// one there (see the top of the file). Identical columns (duplicated points) also repeat values
// but do not help the plain path, so a repeat only counts if the two columns differ elsewhere.
template <typename T>
bool few_distinct_values(const SignedCosts<T>& c) {
  const int64_t probes = std::min<int64_t>(kValueProbeRows, c.n);
  const int64_t r1 = c.n / 3, r2 = 2 * c.n / 3;
  int64_t repeats = 0;
  for (int64_t k = 0; k < probes; ++k) {
    const int64_t i = k * c.n / probes, j0 = (k * 40503 + 17) % c.m;
    const double x = c(i, j0);
    for (int64_t j = 0; j < c.m; ++j) {
      if (j != j0 && c(i, j) == x && (c(r1, j) != c(r1, j0) || c(r2, j) != c(r2, j0))) {
        ++repeats;
        break;
      }
    }
  }
  return 4 * repeats >= probes;
}

template <typename T>
bool use_auction(const SignedCosts<T>& c, double lo, double range, double eps_final, SapWorkspace& ws) {
  return c.n == c.m && c.n >= kAuctionMinN && range > 0.0 && std::isfinite(range) &&
         auction_prices_resolve(c, lo, range, eps_final, ws) && !few_distinct_values(c);
}

// Forward auction on h_ij = c_ij - v_j (a bid lowers the winner's v_j by the bidder's gap to
// its second-best column plus eps), Gauss-Seidel, eps-scaling; each phase starts with every row
// unassigned and keeps the prices. Only v is kept: any finite v is a valid start because
// tight_assignment recomputes u, so running out of budget costs time, never optimality.
template <typename T>
class Auction {
 public:
  // lo, range: of the signed costs.
  Auction(const SignedCosts<T>& c, double lo, double range, SapWorkspace& ws)
      : c_(c), lo_(lo), range_(range), scale_(1.0 / range), fast_(float_scan_ok(c.m, range, scale_)), ws_(ws) {}

  // Leaves the prices in v and the last phase's (possibly partial) assignment in col4row/row4col.
  void run(double eps_final) {
    ws_.v32.assign(c_.m, 0.0f);
    ws_.lists.resize(c_.n);
    for (auto& l : ws_.lists) l.count = -1;
    int64_t budget = kBidsPerRow * c_.n + 4096;
    for (double eps = kEpsStart * range_;; eps /= kEpsFactor) {
      if (!phase(eps, budget)) return;  // out of budget: the prices so far are used
      if (eps <= eps_final) break;
    }
  }

 private:
  // The float scan normalizes double costs in double, float costs in float: there c - lo must
  // not overflow nor 1 / range be denormal.
  static bool float_scan_ok(int64_t m, double range, double scale) {
    const bool float_ok = std::is_same<T, double>::value ? std::isfinite(scale) : (range >= 1e-30 && range <= 1e30);
    return m < (int64_t{1} << 31) && float_ok;
  }

  // One eps phase; false when the bid budget ran out.
  bool phase(double eps, int64_t& budget) {
    auto& v = ws_.v;
    auto& col4row = ws_.col4row;
    auto& row4col = ws_.row4col;
    auto& stack = ws_.stack;
    std::fill(row4col.begin(), row4col.end(), -1);
    std::fill(col4row.begin(), col4row.end(), -1);
    stack.clear();
    for (int64_t i = c_.n - 1; i >= 0; --i) stack.push_back(i);
    while (!stack.empty()) {
      if (--budget < 0) return false;
      const int64_t i = stack.back();
      stack.pop_back();
      const Bid bid = row_bid(i);
      const double gap = std::isfinite(bid.second) ? bid.second - bid.best : 0.0;
      const int64_t j = bid.col;
      v[j] -= gap + eps;
      ws_.v32[j] = static_cast<float>(v[j] * scale_);
      const int64_t evicted = row4col[j];
      row4col[j] = i;
      col4row[i] = j;
      if (evicted >= 0) {
        col4row[evicted] = -1;
        stack.push_back(evicted);
      }
    }
    return true;
  }

  // Row i's bid from its shortlist. The second value is capped by theta, the bound on the unlisted
  // columns, and a list whose second exceeds theta is rebuilt first: an unlisted column may now
  // be the better one.
  Bid row_bid(int64_t i) {
    Shortlist& l = ws_.lists[i];
    if (l.count < 0) refresh_shortlist(i);
    Bid bid = evaluate_shortlist(l, ws_.v.data());
    if (bid.second > l.theta) {
      refresh_shortlist(i);
      bid = evaluate_shortlist(l, ws_.v.data());
    }
    bid.second = std::min(bid.second, l.theta);
    return bid;
  }

  void refresh_shortlist(int64_t i) {
    build_shortlist(c_.row(i), c_.sign, lo_, scale_, ws_.v.data(), ws_.v32.data(), fast_, c_.m, ws_.lists[i]);
  }

  const SignedCosts<T> c_;
  const double lo_, range_, scale_;
  const bool fast_;
  SapWorkspace& ws_;
};

// Starts for the Dijkstra: potentials u, v with every reduced cost c_ij - u_i - v_j >= 0 and a
// partial assignment on tight edges.

// u_i = min_j (c_ij - v_j). A row keeps its auction column if that edge is tight (reduced cost
// exactly 0); the others take their argmin column when it is left free. Dijkstra does the rest.
template <typename T>
void tight_assignment(const SignedCosts<T>& c, SapWorkspace& ws) {
  auto& u = ws.u;
  auto& v = ws.v;
  auto& col4row = ws.col4row;
  auto& row4col = ws.row4col;
  auto& argmin = ws.argmin;
  argmin.resize(c.n);
  for (int64_t i = 0; i < c.n; ++i) {
    const Bid t = top2(c.row(i), c.sign, v.data(), c.m);
    u[i] = t.best;
    argmin[i] = t.col;
    const int64_t j = col4row[i];
    if (j >= 0 && !(c(i, j) - v[j] == t.best)) {
      col4row[i] = -1;
      row4col[j] = -1;
    }
  }
  for (int64_t i = 0; i < c.n; ++i) {
    if (col4row[i] < 0 && row4col[argmin[i]] < 0) {
      row4col[argmin[i]] = i;
      col4row[i] = argmin[i];
    }
  }
}

// u_i = min_j c_ij with v = 0 keeps every reduced cost >= 0 and every free column at the same
// potential (0), which is what makes later augmentations optimal in the rectangular case too.
// Each row whose argmin column is still free is assigned on the spot (a tight edge).
template <typename T>
void greedy_row_reduction(const SignedCosts<T>& c, SapWorkspace& ws) {
  for (int64_t i = 0; i < c.n; ++i) {
    const Bid t = top2(c.row(i), c.sign, ws.v.data(), c.m);  // v = 0: the row minimum
    ws.u[i] = t.best;
    if (ws.row4col[t.col] < 0) {
      ws.row4col[t.col] = i;
      ws.col4row[i] = t.col;
    }
  }
}

// The two smallest h_j = sign*c_j - v_j and their columns; ties keep the first column as best.
struct TwoBest {
  double u1, u2;
  int64_t j1, j2;
};

template <typename T>
TwoBest two_best_columns(const T* row, double sign, const double* v, int64_t m) {
  TwoBest t{std::numeric_limits<double>::infinity(), std::numeric_limits<double>::infinity(), 0, 0};
  for (int64_t j = 0; j < m; ++j) {
    const double h = sign * static_cast<double>(row[j]) - v[j];
    if (h < t.u2) {
      if (h < t.u1) {
        t.u2 = t.u1;
        t.j2 = t.j1;
        t.u1 = h;
        t.j1 = j;
      } else {
        t.u2 = h;
        t.j2 = j;
      }
    }
  }
  return t;
}

// Jonker-Volgenant's augmenting row reduction (square problems only): each free row takes its
// best column at the price of lowering that column's potential to the row's second-best value,
// which evicts the previous owner. Cheap O(m) steps that leave few rows for Dijkstra. Afterwards
// every assigned row is tight at its minimum reduced cost, so u is recomputed from v. Not used
// when n < m: it moves free columns off potential 0, which would break optimality there.
template <typename T>
void augmenting_row_reduction(const SignedCosts<T>& c, SapWorkspace& ws) {
  auto& u = ws.u;
  auto& v = ws.v;
  auto& col4row = ws.col4row;
  auto& row4col = ws.row4col;
  std::vector<int64_t> free_rows, next_free;
  for (int64_t i = 0; i < c.n; ++i) {
    if (col4row[i] < 0) free_rows.push_back(i);
  }
  int64_t budget = 8 * c.n + 64;  // bounds float-rounding ping-pong; leftovers go to Dijkstra
  for (int pass = 0; pass < kArrPasses && !free_rows.empty(); ++pass) {
    next_free.clear();
    size_t k = 0;
    while (k < free_rows.size()) {
      const int64_t i = free_rows[k++];
      if (--budget < 0) {
        next_free.push_back(i);
        continue;
      }
      const TwoBest t = two_best_columns(c.row(i), c.sign, v.data(), c.m);
      int64_t j = t.j1;
      int64_t evicted = row4col[j];
      const bool lowered = t.u1 < t.u2;
      if (lowered) {
        v[j] -= t.u2 - t.u1;
      } else if (evicted >= 0) {
        j = t.j2;
        evicted = row4col[j];
      }
      row4col[j] = i;
      col4row[i] = j;
      if (evicted >= 0) {
        col4row[evicted] = -1;
        if (lowered) {
          free_rows[--k] = evicted;  // retry it at once: its old column just got dearer
        } else {
          next_free.push_back(evicted);
        }
      }
    }
    free_rows.swap(next_free);
  }
  for (int64_t i = 0; i < c.n; ++i) {
    if (col4row[i] >= 0) {
      u[i] = c(i, col4row[i]) - v[col4row[i]];
    } else {
      u[i] = top2(c.row(i), c.sign, v.data(), c.m).best;
    }
  }
}

// The exact step: one shortest augmenting path per free row.

struct AugmentingPath {
  int64_t sink;   // the free column reached
  double length;  // its reduced length: the last (largest) settled label
};

// Dijkstra from the free row `start` over reduced costs c_ij - u_i - v_j until it reaches a
// free column. Dense layout: every step scans all m columns with SIMD; a settled column is masked
// by label = +inf and v_masked = -inf, so its reduced cost is +inf and it can never be relabelled
// or chosen again. Leaves the settled columns' labels, the rows visited and the search tree
// (path) in ws.
template <typename T>
AugmentingPath shortest_augmenting_path(const SignedCosts<T>& c, int64_t start, SapWorkspace& ws) {
  auto& label = ws.shortest;
  auto& v_masked = ws.v_masked;
  const double inf = std::numeric_limits<double>::infinity();

  std::copy(ws.v.begin(), ws.v.end(), v_masked.begin());
  std::fill(label.begin(), label.end(), inf);
  ws.settled_cols.clear();
  ws.visited_rows.clear();

  double min_val = 0.0;
  int64_t i = start;
  while (true) {
    ws.visited_rows.push_back(i);
    const double lowest = scan_row(c.row(i), c.sign, min_val - ws.u[i], v_masked.data(), label.data(),
                                   ws.path.data(), i, c.m);
    FF_CHECK(std::isfinite(lowest), "linear_assignment: no feasible augmenting path (non-finite costs?)");
    const int64_t j = find_label(label.data(), lowest, ws.row4col.data(), c.m);
    min_val = lowest;
    ws.settled_label[j] = lowest;
    ws.settled_cols.push_back(j);
    label[j] = inf;
    v_masked[j] = -inf;
    if (ws.row4col[j] < 0) return {j, min_val};
    i = ws.row4col[j];
  }
}

// Moves each visited row and settled column by the path length minus its own label: reduced costs
// stay >= 0 and the search tree, the augmenting path with it, becomes tight.
inline void update_potentials(int64_t start, double length, SapWorkspace& ws) {
  ws.u[start] += length;
  for (size_t k = 1; k < ws.visited_rows.size(); ++k) {
    const int64_t r = ws.visited_rows[k];
    ws.u[r] += length - ws.settled_label[ws.col4row[r]];
  }
  for (int64_t j : ws.settled_cols) ws.v[j] -= length - ws.settled_label[j];
}

// Walks the path back from the sink: each column on it goes to the row that reached it.
inline void flip_path(int64_t start, int64_t sink, SapWorkspace& ws) {
  int64_t j = sink;
  while (true) {
    const int64_t r = ws.path[j];
    ws.row4col[j] = r;
    std::swap(ws.col4row[r], j);
    if (r == start) break;
  }
}

template <typename T>
void augment_from(const SignedCosts<T>& c, int64_t start, SapWorkspace& ws) {
  const AugmentingPath p = shortest_augmenting_path(c, start, ws);
  update_potentials(start, p.length, ws);
  flip_path(start, p.sink, ws);
}

template <typename T>
class SapSolver {
 public:
  SapSolver(const T* cost, int64_t n, int64_t m, int64_t row_stride, bool maximize, SapWorkspace& ws)
      : c_{cost, n, m, row_stride, maximize ? -1.0 : 1.0}, ws_(ws) {}

  // lo, hi: the smallest and largest cost entry.
  void solve(int64_t* col_for_row, double lo, double hi) {
    ws_.reset(c_.n, c_.m);
    if (c_.sign < 0) {
      std::swap(lo, hi);
      lo = -lo;
      hi = -hi;
    }
    const double range = hi - lo;
    const double eps_final = final_auction_eps(c_.n, range);
    if (use_auction(c_, lo, range, eps_final, ws_)) {
      Auction<T>(c_, lo, range, ws_).run(eps_final);
      tight_assignment(c_, ws_);
    } else {
      greedy_row_reduction(c_, ws_);
      if (c_.n == c_.m && c_.m > 1) augmenting_row_reduction(c_, ws_);
    }
    for (int64_t row = 0; row < c_.n; ++row) {
      if (ws_.col4row[row] < 0) {
        if ((row & 63) == 0) check_interrupt();
        augment_from(c_, row, ws_);
      }
    }
    std::copy(ws_.col4row.begin(), ws_.col4row.end(), col_for_row);
  }

 private:
  const SignedCosts<T> c_;
  SapWorkspace& ws_;
};

template <typename T>
void solve_batch(const AssignmentParams& p) {
  const TensorView& cv = p.cost;
  const int64_t B = cv.shape[0], n = cv.shape[1], m = cv.shape[2];
  const T* base = static_cast<const T*>(cv.data);
  int64_t* out = static_cast<int64_t*>(p.col_for_row.data);

  // Exceptions must not cross an OpenMP region: record the first message and rethrow after.
  std::string first_error;
  std::atomic<bool> interrupted{false};
#if defined(FLOWFAST_WITH_OPENMP)
#pragma omp parallel if (B > 1)
#endif
  {
    SapWorkspace ws;
#if defined(FLOWFAST_WITH_OPENMP)
#pragma omp for schedule(dynamic, 1)
#endif
    for (int64_t b = 0; b < B; ++b) {
      try {
        // The CPU can afford this O(nm) scan (the solve is O(n^2 m)); direct _C callers get an
        // error instead of an arbitrary answer. CUDA callers are checked in Python. The range
        // it finds sets the auction's eps schedule.
        const T* problem = base + b * cv.strides[0];
        double lo = 0.0, hi = 0.0;
        FF_CHECK(cost_bounds(problem, n, m, cv.strides[1], lo, hi),
                 "linear_assignment: cost contains NaN/Inf (problem ", b, ")");
        SapSolver<T> solver(problem, n, m, cv.strides[1], p.maximize, ws);
        solver.solve(out + b * n, lo, hi);
      } catch (const Interrupted&) {
        interrupted = true;
      } catch (const std::exception& e) {
#if defined(FLOWFAST_WITH_OPENMP)
#pragma omp critical(ff_assignment_error)
#endif
        if (first_error.empty()) first_error = e.what();
      }
    }
  }
  if (interrupted) throw Interrupted();
  if (!first_error.empty()) throw Error(first_error);
}

}  // namespace

void assignment_cpu(const AssignmentParams& p) {
  FF_DISPATCH_FLOATING(p.cost.dtype, scalar_t, "linear_assignment", [&] { solve_batch<scalar_t>(p); });
}

}  // namespace ff
