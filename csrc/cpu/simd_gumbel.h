// Batched Gumbel draws for the CPU Sinkhorn sampler: the stream of ff::gumbel (flowfast/random.h),
// sixteen indices per AVX2 step (Philox4x32-10 from csrc/cpu/simd_normal.h, the same 53-bit
// uniforms, a vector double log). One Philox call and two libm logs per plan entry cost ~20 ns,
// half of an entropic pairing at n = 1024. The vector log is within ~2 ulp of libm's, so the draws
// match the scalar/CUDA/reference ones to ~1e-15 relative and the sampled columns are the same
// unless two scores of a row tie to that precision. Without AVX2+FMA the scalar ff::gumbel is used.
#pragma once

#include <cstdint>

#include "cpu/cpu_features.h"
#include "cpu/simd_normal.h"
#include "flowfast/random.h"

namespace ff {
namespace cpu {

#if defined(FF_SIMD_NORMAL_AVX2)
// Natural log for finite x > 0 (normal doubles): x = m 2^e with m in [sqrt(1/2), sqrt(2)),
// log m = 2 atanh(s) = 2 s (1 + s^2/3 + ... + s^20/21), s = (m - 1)/(m + 1), |s| <= 0.172 (truncation
// below 1e-17), and e ln2 added in two parts so it stays exact.
__attribute__((target("avx2,fma"))) inline __m256d log4(__m256d x) {
  const __m256i bits = _mm256_castpd_si256(x);
  const __m256i magic = _mm256_set1_epi64x(0x4330000000000000LL);  // 2^52: integers below it convert exactly
  const __m256d two52 = _mm256_set1_pd(4503599627370496.0);
  __m256d e = _mm256_sub_pd(_mm256_castsi256_pd(_mm256_or_si256(_mm256_srli_epi64(bits, 52), magic)), two52);
  e = _mm256_sub_pd(e, _mm256_set1_pd(1023.0));
  __m256d m = _mm256_castsi256_pd(_mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi64x(0x000FFFFFFFFFFFFFLL)),
                                                  _mm256_set1_epi64x(0x3FF0000000000000LL)));
  const __m256d big = _mm256_cmp_pd(m, _mm256_set1_pd(1.4142135623730951), _CMP_GT_OQ);
  m = _mm256_blendv_pd(m, _mm256_mul_pd(m, _mm256_set1_pd(0.5)), big);
  e = _mm256_add_pd(e, _mm256_and_pd(big, _mm256_set1_pd(1.0)));
  const __m256d one = _mm256_set1_pd(1.0);
  const __m256d s = _mm256_div_pd(_mm256_sub_pd(m, one), _mm256_add_pd(m, one));
  const __m256d s2 = _mm256_mul_pd(s, s);
  __m256d p = _mm256_set1_pd(1.0 / 21);
  for (int k = 9; k >= 0; --k) p = _mm256_fmadd_pd(p, s2, _mm256_set1_pd(1.0 / (2 * k + 1)));
  const __m256d log_m = _mm256_mul_pd(_mm256_add_pd(s, s), p);
  return _mm256_fmadd_pd(e, _mm256_set1_pd(6.93147180369123816490e-01),
                         _mm256_fmadd_pd(e, _mm256_set1_pd(1.90821492927058770002e-10), log_m));
}

// Four u32 words (low 128 bits of v, or the high ones) as doubles, exactly.
__attribute__((target("avx2,fma"))) inline __m256i widen4(__m256i v, bool high) {
  return _mm256_cvtepu32_epi64(high ? _mm256_extracti128_si256(v, 1) : _mm256_castsi256_si128(v));
}

// ff::uniform_open01 of four (hi, lo) word pairs: (bits53 + 0.5) 2^-53, bits53 assembled from
// 64-bit lanes and converted in two exact 32-bit halves.
__attribute__((target("avx2,fma"))) inline __m256d uniform4(__m256i hi, __m256i lo) {
  const __m256i bits = _mm256_and_si256(_mm256_xor_si256(_mm256_slli_epi64(hi, 21), _mm256_srli_epi64(lo, 11)),
                                        _mm256_set1_epi64x((1LL << 53) - 1));
  const __m256i magic = _mm256_set1_epi64x(0x4330000000000000LL);
  const __m256d two52 = _mm256_set1_pd(4503599627370496.0);
  const __m256d low = _mm256_sub_pd(
      _mm256_castsi256_pd(_mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi64x(0xFFFFFFFFLL)), magic)), two52);
  const __m256d high = _mm256_sub_pd(_mm256_castsi256_pd(_mm256_or_si256(_mm256_srli_epi64(bits, 32), magic)), two52);
  const __m256d value = _mm256_fmadd_pd(high, _mm256_set1_pd(4294967296.0), low);
  return _mm256_mul_pd(_mm256_add_pd(value, _mm256_set1_pd(0.5)), _mm256_set1_pd(1.0 / 9007199254740992.0));
}

__attribute__((target("avx2,fma"))) inline void gumbel_row_avx2(uint64_t seed, uint64_t offset, uint64_t first,
                                                               int64_t count, double* out) {
  constexpr int kStates = 2;
  const uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  const __m256i c2 = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(offset)));
  const __m256i c3 = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(offset >> 32)));
  int64_t j = 0;
  for (; j + 8 * kStates <= count; j += 8 * kStates) {
    __m256i x[kStates][4];
    for (int s = 0; s < kStates; ++s) {
      alignas(32) uint32_t lo_words[8], hi_words[8];
      for (int lane = 0; lane < 8; ++lane) {
        const uint64_t index = first + static_cast<uint64_t>(j + 8 * s + lane);
        lo_words[lane] = static_cast<uint32_t>(index);
        hi_words[lane] = static_cast<uint32_t>(index >> 32);
      }
      x[s][0] = _mm256_load_si256(reinterpret_cast<const __m256i*>(lo_words));
      x[s][1] = _mm256_load_si256(reinterpret_cast<const __m256i*>(hi_words));
      x[s][2] = c2;
      x[s][3] = c3;
    }
    philox8<kStates>(x, k0, k1);
    for (int s = 0; s < kStates; ++s) {
      for (int half = 0; half < 2; ++half) {
        const __m256d u = uniform4(widen4(x[s][0], half == 1), widen4(x[s][1], half == 1));
        const __m256d minus_log_u = _mm256_sub_pd(_mm256_setzero_pd(), log4(u));
        _mm256_storeu_pd(out + j + 8 * s + 4 * half, _mm256_sub_pd(_mm256_setzero_pd(), log4(minus_log_u)));
      }
    }
  }
  for (; j < count; ++j) out[j] = gumbel(seed, offset, first + static_cast<uint64_t>(j));
}
#endif

/// out[j] = ff::gumbel(seed, offset, first + j) for j < count (to ~2 ulp with AVX2+FMA).
inline void gumbel_row(uint64_t seed, uint64_t offset, uint64_t first, int64_t count, double* out) {
#if defined(FF_SIMD_NORMAL_AVX2)
  if (has_avx2_fma()) return gumbel_row_avx2(seed, offset, first, count, out);
#endif
  for (int64_t j = 0; j < count; ++j) out[j] = gumbel(seed, offset, first + static_cast<uint64_t>(j));
}

}  // namespace cpu
}  // namespace ff
