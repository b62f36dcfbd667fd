// Vectorized exps for the CPU kernels: double exps (the Sinkhorn loops of csrc/cpu/sinkhorn_lse.h)
// and float row softmax pieces (the simplex family). AVX2+FMA is chosen at run time; the scalar
// fallback uses std::exp. The double exp is good to ~1e-16 relative on [-708, 708]; exp8_of_pd
// takes doubles to float accuracy (Sinkhorn on float32 data); the float exp is described at
// exp8_nonpositive.
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
// exp(x), arguments clamped to [-708, 708]: x = n ln2 + r with |r| <= ln2/2, e^r by its
// degree-12 Taylor polynomial (truncation error < 2e-16 relative), 2^n in the exponent bits.
__attribute__((target("avx2,fma"))) inline __m256d exp4_clamped(__m256d x) {
  x = _mm256_min_pd(_mm256_max_pd(x, _mm256_set1_pd(-708.0)), _mm256_set1_pd(708.0));
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
  return _mm256_mul_pd(p, _mm256_castsi256_pd(exponent));
}

// exp(x) of 8 doubles (lo: lanes 0-3, hi: 4-7) to float accuracy, for float32 data: the range
// reduction x log2(e) = n + t, |t| <= 1/2, runs in double, so the error does not grow with |x|
// (rounding x to float first would cost |x| * 6e-8 relative); 2^t by a degree-6 Chebyshev fit
// (2.5e-9 relative) in float lanes, at most 1.1e-7 relative in all. x is clamped to [-87, 87]
// (results from 1.6e-38 to 6e37: float's normal range).
__attribute__((target("avx2,fma"))) inline __m256 exp8_of_pd(__m256d lo, __m256d hi) {
  const __m256d low = _mm256_set1_pd(-87.0), high = _mm256_set1_pd(87.0), log2e = _mm256_set1_pd(1.4426950408889634);
  const __m256d y_lo = _mm256_mul_pd(_mm256_min_pd(_mm256_max_pd(lo, low), high), log2e);
  const __m256d y_hi = _mm256_mul_pd(_mm256_min_pd(_mm256_max_pd(hi, low), high), log2e);
  const __m256d n_lo = _mm256_round_pd(y_lo, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256d n_hi = _mm256_round_pd(y_hi, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 t = _mm256_set_m128(_mm256_cvtpd_ps(_mm256_sub_pd(y_hi, n_hi)), _mm256_cvtpd_ps(_mm256_sub_pd(y_lo, n_lo)));
  const __m256i n = _mm256_set_m128i(_mm256_cvtpd_epi32(n_hi), _mm256_cvtpd_epi32(n_lo));
  __m256 p = _mm256_set1_ps(1.5461444854736328e-4f);
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.3400427997112274e-3f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(9.618056938052177e-3f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(5.550327152013779e-2f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.24022650718688965f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.6931471824645996f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.0f));
  const __m256i exponent = _mm256_slli_epi32(_mm256_add_epi32(n, _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(exponent));
}


__attribute__((target("avx2,fma"))) inline double horizontal_sum(__m256d v) {
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, v);
  return (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
}


#endif

#if defined(FF_SIMD_EXP_AVX2)
// expf(x) for x <= 0 (float rows: the simplex family's softmax): x = n ln2 + r, |r| <= ln2/2,
// e^r by its degree-7 Taylor polynomial (at most 1 ulp from expf over [-87.3, 0], checked
// exhaustively), 2^n in the exponent bits; below -87.3 (where expf turns subnormal) the result is
// flushed to 0. NaN stays NaN: max_ps returns its second operand when one is NaN.
__attribute__((target("avx2,fma"))) inline __m256 exp8_nonpositive(__m256 x) {
  const __m256 lowest = _mm256_set1_ps(-87.3f);
  const __m256 underflow = _mm256_cmp_ps(x, lowest, _CMP_LT_OQ);
  x = _mm256_max_ps(lowest, x);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fmadd_ps(n, _mm256_set1_ps(-0.693359375f), x);
  r = _mm256_fmadd_ps(n, _mm256_set1_ps(2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.0f / 5040);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i exponent = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(underflow, _mm256_mul_ps(p, _mm256_castsi256_ps(exponent)));
}

/// max of a float row; NaN if the row holds one (max_ps alone would drop it, depending on the lane).
__attribute__((target("avx2,fma"))) inline float max_avx2(const float* s, int64_t m) {
  __m256 top = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  __m256 unordered = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= m; j += 8) {
    const __m256 v = _mm256_loadu_ps(s + j);
    unordered = _mm256_or_ps(unordered, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    top = _mm256_max_ps(top, v);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, top);
  float best = lanes[0];
  for (int k = 1; k < 8; ++k) best = std::max(best, lanes[k]);
  bool nan = _mm256_movemask_ps(unordered) != 0;
  for (; j < m; ++j) {
    nan = nan || std::isnan(s[j]);
    best = std::max(best, s[j]);
  }
  return nan ? std::numeric_limits<float>::quiet_NaN() : best;
}

__attribute__((target("avx2,fma"))) inline float exp_shifted_avx2(const float* s, int64_t m, float shift, float* e) {
  const __m256 vshift = _mm256_set1_ps(shift);
  __m256 acc = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= m; j += 8) {
    const __m256 v = exp8_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(s + j), vshift));
    _mm256_storeu_ps(e + j, v);
    acc = _mm256_add_ps(acc, v);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, acc);
  float total = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
  for (; j < m; ++j) {
    e[j] = std::exp(s[j] - shift);
    total += e[j];
  }
  return total;
}
#endif

/// max_j s_j of a float row.
inline float row_max(const float* s, int64_t m) {
#if defined(FF_SIMD_EXP_AVX2)
  if (has_avx2_fma()) return max_avx2(s, m);
#endif
  float best = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < m; ++j) {
    if (std::isnan(s[j])) return s[j];
    best = std::max(best, s[j]);
  }
  return best;
}

/// e_j = exp(s_j - shift) (shift >= max_j s_j) for a float row; returns sum_j e_j.
inline float exp_shifted(const float* s, int64_t m, float shift, float* e) {
#if defined(FF_SIMD_EXP_AVX2)
  if (has_avx2_fma()) return exp_shifted_avx2(s, m, shift, e);
#endif
  float total = 0.0f;
  for (int64_t j = 0; j < m; ++j) {
    e[j] = std::exp(s[j] - shift);
    total += e[j];
  }
  return total;
}



}  // namespace cpu
}  // namespace ff
