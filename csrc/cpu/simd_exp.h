// Vectorized exp-sums for the CPU kernels (log-sum-exp is the inner loop of Sinkhorn). AVX2+FMA
// is chosen at run time; the scalar fallback uses std::exp. Only arguments <= 0 occur (scores
// minus their max), so the vector exp handles x in [-708, 0] to ~1e-16 relative and flushes
// anything below -708 (where exp < 4e-308) to 0.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "cpu/cpu_features.h"

#if defined(FF_CPU_X86_SIMD)
#define FF_SIMD_EXP_AVX2 1
#endif

namespace ff {
namespace cpu {

#if defined(FF_SIMD_EXP_AVX2)
// exp(x) for x <= 0: x = n ln2 + r with |r| <= ln2/2, e^r by its degree-12 Taylor polynomial
// (truncation error < 2e-16 relative), 2^n assembled in the exponent bits.
__attribute__((target("avx2,fma"))) inline __m256d exp4_nonpositive(__m256d x) {
  const __m256d lowest = _mm256_set1_pd(-708.0);
  const __m256d underflow = _mm256_cmp_pd(x, lowest, _CMP_LT_OQ);
  x = _mm256_max_pd(x, lowest);
  const __m256d n = _mm256_round_pd(_mm256_mul_pd(x, _mm256_set1_pd(1.4426950408889634)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256d r = _mm256_fmadd_pd(n, _mm256_set1_pd(-6.93147180369123816490e-01), x);
  r = _mm256_fmadd_pd(n, _mm256_set1_pd(-1.90821492927058770002e-10), r);
  static constexpr double kInvFactorial[13] = {1.0,
                                               1.0,
                                               1.0 / 2,
                                               1.0 / 6,
                                               1.0 / 24,
                                               1.0 / 120,
                                               1.0 / 720,
                                               1.0 / 5040,
                                               1.0 / 40320,
                                               1.0 / 362880,
                                               1.0 / 3628800,
                                               1.0 / 39916800,
                                               1.0 / 479001600};
  __m256d p = _mm256_set1_pd(kInvFactorial[12]);
  for (int k = 11; k >= 0; --k) p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(kInvFactorial[k]));
  // n + 1.5 * 2^52 keeps n in the low mantissa bits; rebias to the exponent field of 2^n.
  const __m256i n_bits = _mm256_castpd_si256(_mm256_add_pd(n, _mm256_set1_pd(6755399441055744.0)));
  const __m256i exponent =
      _mm256_slli_epi64(_mm256_sub_epi64(n_bits, _mm256_set1_epi64x(0x4337FFFFFFFFFC01LL)), 52);
  const __m256d result = _mm256_mul_pd(p, _mm256_castsi256_pd(exponent));
  return _mm256_andnot_pd(underflow, result);
}

__attribute__((target("avx2,fma"))) inline double horizontal_sum(__m256d v) {
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, v);
  return (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
}

__attribute__((target("avx2,fma"))) inline double exp_sum_avx2(const double* s, int64_t m, double shift) {
  const __m256d vshift = _mm256_set1_pd(shift);
  __m256d acc = _mm256_setzero_pd();
  int64_t j = 0;
  for (; j + 4 <= m; j += 4) acc = _mm256_add_pd(acc, exp4_nonpositive(_mm256_sub_pd(_mm256_loadu_pd(s + j), vshift)));
  double total = horizontal_sum(acc);
  for (; j < m; ++j) total += std::exp(s[j] - shift);
  return total;
}

__attribute__((target("avx2,fma"))) inline void accumulate_exp_avx2(double* sum, const double* s, const double* shift,
                                                                   int64_t m) {
  int64_t j = 0;
  for (; j + 4 <= m; j += 4) {
    const __m256d e = exp4_nonpositive(_mm256_sub_pd(_mm256_loadu_pd(s + j), _mm256_loadu_pd(shift + j)));
    _mm256_storeu_pd(sum + j, _mm256_add_pd(_mm256_loadu_pd(sum + j), e));
  }
  for (; j < m; ++j) sum[j] += std::exp(s[j] - shift[j]);
}
#endif

/// sum_j exp(s_j - shift), shift >= max_j s_j.
inline double exp_sum(const double* s, int64_t m, double shift) {
#if defined(FF_SIMD_EXP_AVX2)
  if (has_avx2_fma()) return exp_sum_avx2(s, m, shift);
#endif
  double total = 0.0;
  for (int64_t j = 0; j < m; ++j) total += std::exp(s[j] - shift);
  return total;
}

/// sum_j += exp(s_j - shift_j) elementwise, shift_j >= s_j.
inline void accumulate_exp(double* sum, const double* s, const double* shift, int64_t m) {
#if defined(FF_SIMD_EXP_AVX2)
  if (has_avx2_fma()) return accumulate_exp_avx2(sum, s, shift, m);
#endif
  for (int64_t j = 0; j < m; ++j) sum[j] += std::exp(s[j] - shift[j]);
}

/// log sum_j exp(s_j), two passes (max, then the shifted exp-sum).
inline double log_sum_exp(const double* s, int64_t m) {
  double top = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < m; ++j) top = std::max(top, s[j]);
  if (top == -std::numeric_limits<double>::infinity()) return top;
  return top + std::log(exp_sum(s, m, top));
}

}  // namespace cpu
}  // namespace ff
