// CPU twin of csrc/cuda/assignment_cuda.cu: exact rectangular linear assignment by shortest
// augmenting paths (Jonker-Volgenant family, Dijkstra on reduced costs), one problem per OpenMP
// thread. Costs are read in their own dtype; potentials and path lengths are kept in double so
// float32 inputs are solved exactly w.r.t. their float32 values.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "flowfast/assignment.h"

namespace ff {
namespace {

constexpr int kArrPasses = 2;  // Jonker-Volgenant's choice; more passes measured no faster

// Scratch for one problem; reused across the problems a thread solves.
struct SapWorkspace {
  std::vector<double> u, v, shortest, v_masked, settled_label;
  std::vector<int64_t> col4row, row4col, path, settled_cols, visited_rows;

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

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
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

inline bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
}
#endif

template <typename T>
double scan_row(const T* row, double sign, double base, const double* v, double* label, int64_t* path, int64_t i,
                int64_t m) {
#if defined(FF_HAVE_AVX2_PATH)
  if (cpu_has_avx2()) return scan_row_avx2(row, sign, base, v, label, path, i, m);
#endif
  return scan_row_scalar(row, sign, base, v, label, path, i, m);
}

inline int64_t find_label(const double* label, double lowest, const int64_t* row4col, int64_t m) {
#if defined(FF_HAVE_AVX2_PATH)
  if (cpu_has_avx2()) return find_label_avx2(label, lowest, row4col, m);
#endif
  return find_label_scalar(label, lowest, row4col, 0, m, -1);
}

template <typename T>
class SapSolver {
 public:
  SapSolver(const T* cost, int64_t n, int64_t m, int64_t row_stride, bool maximize, SapWorkspace& ws)
      : cost_(cost), n_(n), m_(m), row_stride_(row_stride), sign_(maximize ? -1.0 : 1.0), ws_(ws) {}

  void solve(int64_t* col_for_row) {
    ws_.reset(n_, m_);
    greedy_row_reduction();
    if (n_ == m_ && m_ > 1) augmenting_row_reduction();
    for (int64_t row = 0; row < n_; ++row) {
      if (ws_.col4row[row] < 0) augment_from(row);
    }
    std::copy(ws_.col4row.begin(), ws_.col4row.end(), col_for_row);
  }

 private:
  double c(int64_t i, int64_t j) const { return sign_ * static_cast<double>(cost_[i * row_stride_ + j]); }

  // u_i = min_j c_ij with v = 0 keeps every reduced cost >= 0 and every free column at the same
  // potential (0), which is what makes later augmentations optimal in the rectangular case too.
  // Each row whose argmin column is still free is assigned on the spot (a tight edge).
  void greedy_row_reduction() {
    for (int64_t i = 0; i < n_; ++i) {
      double best = std::numeric_limits<double>::infinity();
      int64_t best_j = 0;
      for (int64_t j = 0; j < m_; ++j) {
        const double cij = c(i, j);
        if (cij < best) {
          best = cij;
          best_j = j;
        }
      }
      ws_.u[i] = best;
      if (ws_.row4col[best_j] < 0) {
        ws_.row4col[best_j] = i;
        ws_.col4row[i] = best_j;
      }
    }
  }

  // Jonker-Volgenant's augmenting row reduction (square problems only): each free row takes its
  // best column at the price of lowering that column's potential to the row's second-best value,
  // which evicts the previous owner. Cheap O(m) steps that leave few rows for Dijkstra. Afterwards
  // every assigned row is tight at its minimum reduced cost, so u is recomputed from v. Not used
  // when n < m: it moves free columns off potential 0, which would break optimality there.
  void augmenting_row_reduction() {
    auto& u = ws_.u;
    auto& v = ws_.v;
    auto& col4row = ws_.col4row;
    auto& row4col = ws_.row4col;
    std::vector<int64_t> free_rows, next_free;
    for (int64_t i = 0; i < n_; ++i) {
      if (col4row[i] < 0) free_rows.push_back(i);
    }
    int64_t budget = 8 * n_ + 64;  // bounds float-rounding ping-pong; leftovers go to Dijkstra
    for (int pass = 0; pass < kArrPasses && !free_rows.empty(); ++pass) {
      next_free.clear();
      size_t k = 0;
      while (k < free_rows.size()) {
        const int64_t i = free_rows[k++];
        if (--budget < 0) {
          next_free.push_back(i);
          continue;
        }
        const T* row = cost_ + i * row_stride_;
        double u1 = std::numeric_limits<double>::infinity(), u2 = u1;
        int64_t j1 = 0, j2 = 0;
        for (int64_t j = 0; j < m_; ++j) {
          const double h = sign_ * static_cast<double>(row[j]) - v[j];
          if (h < u2) {
            if (h < u1) {
              u2 = u1;
              j2 = j1;
              u1 = h;
              j1 = j;
            } else {
              u2 = h;
              j2 = j;
            }
          }
        }
        int64_t evicted = row4col[j1];
        const bool lowered = u1 < u2;
        if (lowered) {
          v[j1] -= u2 - u1;
        } else if (evicted >= 0) {
          j1 = j2;
          evicted = row4col[j2];
        }
        row4col[j1] = i;
        col4row[i] = j1;
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
    for (int64_t i = 0; i < n_; ++i) {
      const T* row = cost_ + i * row_stride_;
      if (col4row[i] >= 0) {
        u[i] = sign_ * static_cast<double>(row[col4row[i]]) - v[col4row[i]];
      } else {
        double best = std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j < m_; ++j) best = std::min(best, sign_ * static_cast<double>(row[j]) - v[j]);
        u[i] = best;
      }
    }
  }

  // Dijkstra from the free row `start` over reduced costs c_ij - u_i - v_j until it reaches a
  // free column, then update the potentials and flip the path. Dense layout: every step scans
  // all m columns with SIMD; a settled column is masked by label = +inf and v_masked = -inf, so
  // its reduced cost is +inf and it can never be relabelled or chosen again.
  void augment_from(int64_t start) {
    auto& u = ws_.u;
    auto& v = ws_.v;
    auto& label = ws_.shortest;
    auto& v_masked = ws_.v_masked;
    auto& settled_label = ws_.settled_label;
    auto& settled = ws_.settled_cols;
    const double inf = std::numeric_limits<double>::infinity();

    std::copy(v.begin(), v.end(), v_masked.begin());
    std::fill(label.begin(), label.end(), inf);
    settled.clear();
    ws_.visited_rows.clear();

    double min_val = 0.0;
    int64_t i = start;
    int64_t sink = -1;
    while (sink < 0) {
      ws_.visited_rows.push_back(i);
      const double lowest = scan_row<T>(cost_ + i * row_stride_, sign_, min_val - u[i], v_masked.data(),
                                        label.data(), ws_.path.data(), i, m_);
      FF_CHECK(std::isfinite(lowest), "linear_assignment: no feasible augmenting path (non-finite costs?)");
      const int64_t j = find_label(label.data(), lowest, ws_.row4col.data(), m_);
      min_val = lowest;
      settled_label[j] = lowest;
      settled.push_back(j);
      label[j] = inf;
      v_masked[j] = -inf;
      if (ws_.row4col[j] < 0) {
        sink = j;
      } else {
        i = ws_.row4col[j];
      }
    }

    u[start] += min_val;
    for (size_t k = 1; k < ws_.visited_rows.size(); ++k) {
      const int64_t r = ws_.visited_rows[k];
      u[r] += min_val - settled_label[ws_.col4row[r]];
    }
    for (int64_t j : settled) v[j] -= min_val - settled_label[j];

    int64_t j = sink;
    while (true) {
      const int64_t r = ws_.path[j];
      ws_.row4col[j] = r;
      std::swap(ws_.col4row[r], j);
      if (r == start) break;
    }
  }

  const T* cost_;
  int64_t n_, m_, row_stride_;
  double sign_;
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
        // error instead of an arbitrary answer. CUDA callers are checked in Python.
        const T* problem = base + b * cv.strides[0];
        for (int64_t i = 0; i < n; ++i) {
          for (int64_t j = 0; j < m; ++j) {
            FF_CHECK(std::isfinite(static_cast<double>(problem[i * cv.strides[1] + j])),
                     "linear_assignment: cost contains NaN/Inf (problem ", b, ")");
          }
        }
        SapSolver<T> solver(base + b * cv.strides[0], n, m, cv.strides[1], p.maximize, ws);
        solver.solve(out + b * n);
      } catch (const std::exception& e) {
#if defined(FLOWFAST_WITH_OPENMP)
#pragma omp critical(ff_assignment_error)
#endif
        if (first_error.empty()) first_error = e.what();
      }
    }
  }
  if (!first_error.empty()) throw Error(first_error);
}

}  // namespace

void assignment_cpu(const AssignmentParams& p) {
  FF_DISPATCH_FLOATING(p.cost.dtype, scalar_t, "linear_assignment", [&] { solve_batch<scalar_t>(p); });
}

}  // namespace ff
