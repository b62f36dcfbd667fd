// The inner loops of the CPU Sinkhorn over a dense cost (unit column stride): shifted exp-sums of
// the two half-steps and the plan entries, fused with the score arithmetic so that one pass over
// the matrix does a half-step. The scores are computed in double from the cost's dtype, their
// exps (csrc/cpu/simd_exp.h) to the data's accuracy: ~1e-16 relative for float64 data, ~1e-7 for
// float32 data (range reduction in double, polynomial in float lanes: twice the lanes per op),
// and summed in double.
//
// A log-sum-exp needs a shift near the max of its scores. Instead of a max pass before the exp
// pass, the caller passes a guess (the previous iteration's value) and these loops return the max
// relative to it as well: within +-kShiftWindow of the guess the sum is exact to the polynomial's
// accuracy, outside the caller redoes the pass with the max as the shift.
#pragma once

#include <cmath>
#include <cstdint>

#include "cpu/simd_exp.h"

namespace ff {
namespace cpu {

// e^40 leaves 2e17 of headroom to double's range per term and flushes nothing that matters:
// a term below e^-708 next to one of at least e^-40 is 1e-290 of it.
constexpr double kShiftWindow = 40.0;

/// The sum of exp(x_k) and the max of x_k.
struct ShiftedSum {
  double sum = 0.0;
  double top = -INFINITY;
};

/// Mass and transport cost sum_j P_j c_j of one plan row.
struct PlanRow {
  double mass = 0.0;
  double cost = 0.0;
};

template <typename T>
inline void plan_entry(T c, double f, double log_a, double g, double log_b, double inv_eps, double* col_mass,
                       double* entries, int64_t j, PlanRow& row) {
  const double e = std::exp(((f + g) - static_cast<double>(c)) * inv_eps + (log_a + log_b));
  row.mass += e;
  row.cost += e * static_cast<double>(c);
  if (col_mass) col_mass[j] += e;
  if (entries) entries[j] = e;
}

#if defined(FF_SIMD_EXP_AVX2)
__attribute__((target("avx2,fma"))) inline void load8(const float* p, __m256d& lo, __m256d& hi) {
  const __m256 v = _mm256_loadu_ps(p);
  lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
  hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
}
__attribute__((target("avx2,fma"))) inline void load8(const double* p, __m256d& lo, __m256d& hi) {
  lo = _mm256_loadu_pd(p);
  hi = _mm256_loadu_pd(p + 4);
}

// exp of 8 scores held as two double vectors: to float accuracy for float32 data, to double's for
// float64 data.
template <typename T>
__attribute__((target("avx2,fma"))) inline void exp8(__m256d& lo, __m256d& hi) {
  if constexpr (sizeof(T) >= 8) {
    lo = exp4_clamped(lo);
    hi = exp4_clamped(hi);
  } else {
    const __m256 e = exp8_of_pd(lo, hi);
    lo = _mm256_cvtps_pd(_mm256_castps256_ps128(e));
    hi = _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1));
  }
}

__attribute__((target("avx2,fma"))) inline double horizontal_max(__m256d v) {
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, v);
  return std::max(std::max(lanes[0], lanes[1]), std::max(lanes[2], lanes[3]));
}

template <typename T, typename ExpT>
__attribute__((target("avx2,fma"))) ShiftedSum row_shifted_sum_avx2(const T* c, const double* h, const double* log_w,
                                                                   int64_t m, double inv_eps, double shift) {
  const __m256d vinv = _mm256_set1_pd(inv_eps), vshift = _mm256_set1_pd(shift);
  __m256d acc_lo = _mm256_setzero_pd(), acc_hi = _mm256_setzero_pd();
  __m256d top_lo = _mm256_set1_pd(-INFINITY), top_hi = top_lo;
  int64_t j = 0;
  for (; j + 8 <= m; j += 8) {
    __m256d lo, hi;
    load8(c + j, lo, hi);
    lo = _mm256_sub_pd(_mm256_fmadd_pd(_mm256_sub_pd(_mm256_loadu_pd(h + j), lo), vinv, _mm256_loadu_pd(log_w + j)),
                       vshift);
    hi = _mm256_sub_pd(
        _mm256_fmadd_pd(_mm256_sub_pd(_mm256_loadu_pd(h + j + 4), hi), vinv, _mm256_loadu_pd(log_w + j + 4)), vshift);
    top_lo = _mm256_max_pd(top_lo, lo);
    top_hi = _mm256_max_pd(top_hi, hi);
    exp8<ExpT>(lo, hi);
    acc_lo = _mm256_add_pd(acc_lo, lo);
    acc_hi = _mm256_add_pd(acc_hi, hi);
  }
  ShiftedSum out{horizontal_sum(_mm256_add_pd(acc_lo, acc_hi)), horizontal_max(_mm256_max_pd(top_lo, top_hi))};
  for (; j < m; ++j) {
    const double x = (h[j] - static_cast<double>(c[j])) * inv_eps + log_w[j] - shift;
    out.top = std::max(out.top, x);
    out.sum += std::exp(x);
  }
  return out;
}

template <typename T>
__attribute__((target("avx2,fma"))) void column_shifted_accumulate_avx2(const T* c, double f, double log_a,
                                                                       int64_t width, double inv_eps,
                                                                       const double* shift, double* top,
                                                                       double* sum) {
  const __m256d vinv = _mm256_set1_pd(inv_eps), vf = _mm256_set1_pd(f), vla = _mm256_set1_pd(log_a);
  int64_t k = 0;
  for (; k + 8 <= width; k += 8) {
    __m256d lo, hi;
    load8(c + k, lo, hi);
    lo = _mm256_sub_pd(_mm256_fmadd_pd(_mm256_sub_pd(vf, lo), vinv, vla), _mm256_loadu_pd(shift + k));
    hi = _mm256_sub_pd(_mm256_fmadd_pd(_mm256_sub_pd(vf, hi), vinv, vla), _mm256_loadu_pd(shift + k + 4));
    _mm256_storeu_pd(top + k, _mm256_max_pd(_mm256_loadu_pd(top + k), lo));
    _mm256_storeu_pd(top + k + 4, _mm256_max_pd(_mm256_loadu_pd(top + k + 4), hi));
    exp8<T>(lo, hi);
    _mm256_storeu_pd(sum + k, _mm256_add_pd(_mm256_loadu_pd(sum + k), lo));
    _mm256_storeu_pd(sum + k + 4, _mm256_add_pd(_mm256_loadu_pd(sum + k + 4), hi));
  }
  for (; k < width; ++k) {
    const double x = (f - static_cast<double>(c[k])) * inv_eps + log_a - shift[k];
    top[k] = std::max(top[k], x);
    sum[k] += std::exp(x);
  }
}

template <typename T>
__attribute__((target("avx2,fma"))) PlanRow plan_row_avx2(const T* c, double f, double log_a, const double* g,
                                                         const double* log_b, int64_t m, double inv_eps,
                                                         double* col_mass, double* entries) {
  const __m256d vinv = _mm256_set1_pd(inv_eps), vf = _mm256_set1_pd(f), vla = _mm256_set1_pd(log_a);
  // Entries below the exp's range are 0, as std::exp makes them (up to its subnormals).
  const __m256d lowest = _mm256_set1_pd(sizeof(T) >= 8 ? -708.0 : -87.0);
  __m256d mass = _mm256_setzero_pd(), cost = _mm256_setzero_pd();
  int64_t j = 0;
  for (; j + 8 <= m; j += 8) {
    __m256d c_lo, c_hi;
    load8(c + j, c_lo, c_hi);
    __m256d lo = _mm256_fmadd_pd(_mm256_sub_pd(_mm256_add_pd(vf, _mm256_loadu_pd(g + j)), c_lo), vinv,
                                 _mm256_add_pd(vla, _mm256_loadu_pd(log_b + j)));
    __m256d hi = _mm256_fmadd_pd(_mm256_sub_pd(_mm256_add_pd(vf, _mm256_loadu_pd(g + j + 4)), c_hi), vinv,
                                 _mm256_add_pd(vla, _mm256_loadu_pd(log_b + j + 4)));
    const __m256d under_lo = _mm256_cmp_pd(lo, lowest, _CMP_LT_OQ), under_hi = _mm256_cmp_pd(hi, lowest, _CMP_LT_OQ);
    exp8<T>(lo, hi);
    lo = _mm256_andnot_pd(under_lo, lo);
    hi = _mm256_andnot_pd(under_hi, hi);
    mass = _mm256_add_pd(mass, _mm256_add_pd(lo, hi));
    cost = _mm256_fmadd_pd(lo, c_lo, _mm256_fmadd_pd(hi, c_hi, cost));
    if (col_mass) {
      _mm256_storeu_pd(col_mass + j, _mm256_add_pd(_mm256_loadu_pd(col_mass + j), lo));
      _mm256_storeu_pd(col_mass + j + 4, _mm256_add_pd(_mm256_loadu_pd(col_mass + j + 4), hi));
    }
    if (entries) {
      _mm256_storeu_pd(entries + j, lo);
      _mm256_storeu_pd(entries + j + 4, hi);
    }
  }
  PlanRow out{horizontal_sum(mass), horizontal_sum(cost)};
  for (; j < m; ++j) plan_entry(c[j], f, log_a, g[j], log_b[j], inv_eps, col_mass, entries, j, out);
  return out;
}

template <typename T>
__attribute__((target("avx2,fma"))) double dot_avx2(const T* k, const double* v, int64_t m) {
  __m256d acc_lo = _mm256_setzero_pd(), acc_hi = _mm256_setzero_pd();
  int64_t j = 0;
  for (; j + 8 <= m; j += 8) {
    __m256d lo, hi;
    load8(k + j, lo, hi);
    acc_lo = _mm256_fmadd_pd(lo, _mm256_loadu_pd(v + j), acc_lo);
    acc_hi = _mm256_fmadd_pd(hi, _mm256_loadu_pd(v + j + 4), acc_hi);
  }
  double total = horizontal_sum(_mm256_add_pd(acc_lo, acc_hi));
  for (; j < m; ++j) total += static_cast<double>(k[j]) * v[j];
  return total;
}

template <typename T>
__attribute__((target("avx2,fma"))) void axpy_avx2(const T* k, double u, double* acc, int64_t m) {
  const __m256d vu = _mm256_set1_pd(u);
  int64_t j = 0;
  for (; j + 8 <= m; j += 8) {
    __m256d lo, hi;
    load8(k + j, lo, hi);
    _mm256_storeu_pd(acc + j, _mm256_fmadd_pd(lo, vu, _mm256_loadu_pd(acc + j)));
    _mm256_storeu_pd(acc + j + 4, _mm256_fmadd_pd(hi, vu, _mm256_loadu_pd(acc + j + 4)));
  }
  for (; j < m; ++j) acc[j] += static_cast<double>(k[j]) * u;
}

template <typename T>
__attribute__((target("avx2,fma"))) int64_t gumbel_argmax_avx2(const T* c, const double* g, const double* log_b,
                                                              const double* noise, int64_t m, double eps) {
  const __m256d veps = _mm256_set1_pd(eps), four = _mm256_set1_pd(4.0);
  __m256d best = _mm256_set1_pd(-INFINITY), best_index = _mm256_setzero_pd();
  __m256d index = _mm256_set_pd(3.0, 2.0, 1.0, 0.0);
  int64_t j = 0;
  for (; j + 4 <= m; j += 4) {
    // The scalar formula, operation for operation (a division, not a multiply): the same scores.
    __m256d c4;
    if constexpr (sizeof(T) >= 8) {
      c4 = _mm256_loadu_pd(reinterpret_cast<const double*>(c) + j);
    } else {
      c4 = _mm256_cvtps_pd(_mm_loadu_ps(reinterpret_cast<const float*>(c) + j));
    }
    const __m256d score = _mm256_add_pd(
        _mm256_add_pd(_mm256_div_pd(_mm256_sub_pd(_mm256_loadu_pd(g + j), c4), veps), _mm256_loadu_pd(log_b + j)),
        _mm256_loadu_pd(noise + j));
    const __m256d better = _mm256_cmp_pd(score, best, _CMP_GT_OQ);  // strict: each lane keeps its first max
    best = _mm256_blendv_pd(best, score, better);
    best_index = _mm256_blendv_pd(best_index, index, better);
    index = _mm256_add_pd(index, four);
  }
  alignas(32) double lane_best[4], lane_index[4];
  _mm256_store_pd(lane_best, best);
  _mm256_store_pd(lane_index, best_index);
  double top = -INFINITY;
  int64_t top_j = 0;
  for (int lane = 0; lane < 4; ++lane) {  // the first max over the lanes: ties go to the smaller index
    const int64_t lane_j = static_cast<int64_t>(lane_index[lane]);
    if (lane_best[lane] > top || (lane_best[lane] == top && lane_j < top_j)) {
      top = lane_best[lane];
      top_j = lane_j;
    }
  }
  for (; j < m; ++j) {
    const double score = (g[j] - static_cast<double>(c[j])) / eps + log_b[j] + noise[j];
    if (score > top) {
      top = score;
      top_j = j;
    }
  }
  return top_j;
}

// Four rows at once: each feature row of q is loaded once for four points (the features-major
// copy is the stream that bounds this loop at large d).
__attribute__((target("avx2,fma"))) inline void sq_dist_rows4_avx2(const double* p, const double* q_soa,
                                                                  int64_t count, int64_t d, double* out) {
  int64_t j = 0;
  for (; j + 4 <= count; j += 4) {
    __m256d acc0 = _mm256_setzero_pd(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    for (int64_t k = 0; k < d; ++k) {
      const __m256d qk = _mm256_loadu_pd(q_soa + k * count + j);
      const __m256d d0 = _mm256_sub_pd(_mm256_set1_pd(p[k]), qk);
      const __m256d d1 = _mm256_sub_pd(_mm256_set1_pd(p[d + k]), qk);
      const __m256d d2 = _mm256_sub_pd(_mm256_set1_pd(p[2 * d + k]), qk);
      const __m256d d3 = _mm256_sub_pd(_mm256_set1_pd(p[3 * d + k]), qk);
      acc0 = _mm256_fmadd_pd(d0, d0, acc0);
      acc1 = _mm256_fmadd_pd(d1, d1, acc1);
      acc2 = _mm256_fmadd_pd(d2, d2, acc2);
      acc3 = _mm256_fmadd_pd(d3, d3, acc3);
    }
    _mm256_storeu_pd(out + j, acc0);
    _mm256_storeu_pd(out + count + j, acc1);
    _mm256_storeu_pd(out + 2 * count + j, acc2);
    _mm256_storeu_pd(out + 3 * count + j, acc3);
  }
  for (; j < count; ++j) {
    for (int r = 0; r < 4; ++r) {
      double acc = 0.0;
      for (int64_t k = 0; k < d; ++k) {
        const double diff = p[r * d + k] - q_soa[k * count + j];
        acc = std::fma(diff, diff, acc);
      }
      out[r * count + j] = acc;
    }
  }
}
#endif

/// Row half-step: x_j = (h_j - c_j) / eps + log_w_j - shift over one cost row c[0..m), exps to
/// the accuracy of data of dtype ExpT (a cost row computed into doubles from float32 data: float).
template <typename T, typename ExpT = T>
ShiftedSum row_shifted_sum(const T* c, const double* h, const double* log_w, int64_t m, double inv_eps,
                           double shift) {
#if defined(FF_SIMD_EXP_AVX2)
  if (has_avx2_fma()) return row_shifted_sum_avx2<T, ExpT>(c, h, log_w, m, inv_eps, shift);
#endif
  ShiftedSum out;
  for (int64_t j = 0; j < m; ++j) {
    const double x = (h[j] - static_cast<double>(c[j])) * inv_eps + log_w[j] - shift;
    out.top = std::max(out.top, x);
    out.sum += std::exp(x);
  }
  return out;
}

/// The shift a log-sum-exp starts from: its guess, or 0 where there is none (not finite).
inline double start_shift(double guess) { return std::isfinite(guess) ? guess : 0.0; }

/// LSE_j((h_j - c_j) / eps + log_w_j) over one cost row: one pass shifted by `guess`, a second
/// with the row's max as the shift where that max is not within kShiftWindow of the guess.
template <typename T, typename ExpT = T>
double shifted_row_lse(const T* c, const double* h, const double* log_w, int64_t m, double inv_eps, double guess) {
  double shift = start_shift(guess);
  ShiftedSum s = row_shifted_sum<T, ExpT>(c, h, log_w, m, inv_eps, shift);
  if (!(std::fabs(s.top) <= kShiftWindow)) {
    shift += s.top;
    s = row_shifted_sum<T, ExpT>(c, h, log_w, m, inv_eps, shift);
  }
  return shift + std::log(s.sum);
}

/// Column half-step, one cost row c[0..width) of a column block: x_k = (f - c_k) / eps + log_a -
/// shift_k; top_k = max(top_k, x_k), sum_k += exp(x_k).
template <typename T>
void column_shifted_accumulate(const T* c, double f, double log_a, int64_t width, double inv_eps,
                               const double* shift, double* top, double* sum) {
#if defined(FF_SIMD_EXP_AVX2)
  if (has_avx2_fma()) return column_shifted_accumulate_avx2<T>(c, f, log_a, width, inv_eps, shift, top, sum);
#endif
  for (int64_t k = 0; k < width; ++k) {
    const double x = (f - static_cast<double>(c[k])) * inv_eps + log_a - shift[k];
    top[k] = std::max(top[k], x);
    sum[k] += std::exp(x);
  }
}

/// One plan row, P_j = exp((f + g_j - c_j) / eps + log_a + log_b_j): its mass and cost; adds P_j
/// to col_mass[j] and stores it in entries[j] where those are given.
template <typename T>
PlanRow plan_row(const T* c, double f, double log_a, const double* g, const double* log_b, int64_t m, double inv_eps,
                 double* col_mass, double* entries) {
#if defined(FF_SIMD_EXP_AVX2)
  if (has_avx2_fma()) return plan_row_avx2<T>(c, f, log_a, g, log_b, m, inv_eps, col_mass, entries);
#endif
  PlanRow out;
  for (int64_t j = 0; j < m; ++j) plan_entry(c[j], f, log_a, g[j], log_b[j], inv_eps, col_mass, entries, j, out);
  return out;
}

/// sum_j k_j v_j (a kernel row against a scaling), accumulated in double.
template <typename T>
double dot(const T* k, const double* v, int64_t m) {
#if defined(FF_SIMD_EXP_AVX2)
  if (has_avx2_fma()) return dot_avx2<T>(k, v, m);
#endif
  double total = 0.0;
  for (int64_t j = 0; j < m; ++j) total += static_cast<double>(k[j]) * v[j];
  return total;
}

/// acc_j += u k_j.
template <typename T>
void axpy(const T* k, double u, double* acc, int64_t m) {
#if defined(FF_SIMD_EXP_AVX2)
  if (has_avx2_fma()) return axpy_avx2<T>(k, u, acc, m);
#endif
  for (int64_t j = 0; j < m; ++j) acc[j] += static_cast<double>(k[j]) * u;
}

/// argmax_j of (g_j - c_j) / eps + log_b_j + noise_j over one dense cost row (the first on ties):
/// one Gumbel-max draw of a plan row.
template <typename T>
int64_t gumbel_argmax(const T* c, const double* g, const double* log_b, const double* noise, int64_t m, double eps) {
#if defined(FF_SIMD_EXP_AVX2)
  if (has_avx2_fma()) return gumbel_argmax_avx2<T>(c, g, log_b, noise, m, eps);
#endif
  double top = -INFINITY;
  int64_t top_j = 0;
  for (int64_t j = 0; j < m; ++j) {
    const double score = (g[j] - static_cast<double>(c[j])) / eps + log_b[j] + noise[j];
    if (score > top) {
      top = score;
      top_j = j;
    }
  }
  return top_j;
}

/// out[r * count + j] = ||p_r - q_j||^2 for four points p (p[r * d + k]), by differences (no
/// cancellation), q features-major: q_soa[k * count + j]. Summed over k in order with FMAs.
inline void sq_dist_rows4(const double* p, const double* q_soa, int64_t count, int64_t d, double* out) {
#if defined(FF_SIMD_EXP_AVX2)
  if (has_avx2_fma()) return sq_dist_rows4_avx2(p, q_soa, count, d, out);
#endif
  for (int r = 0; r < 4; ++r) {
    for (int64_t j = 0; j < count; ++j) {
      double acc = 0.0;
      for (int64_t k = 0; k < d; ++k) {
        const double diff = p[r * d + k] - q_soa[k * count + j];
        acc = std::fma(diff, diff, acc);
      }
      out[r * count + j] = acc;
    }
  }
}

}  // namespace cpu
}  // namespace ff
