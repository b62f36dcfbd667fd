// Batched Philox + Box-Muller normals for the CPU kernels: the stream of ff::standard_normal_pair
// (flowfast/interpolant_math.h), eight pairs per AVX2 step. Drawing noise one pair at a time with
// libm's logf/cosf/sinf cost ~30 ns per element, 5-10x torch.randn; this is what made the fused CPU
// interpolant kernels slower than eager torch.
//
// The float stream (float32 and 16-bit batches) uses its own vector logf and sincosf (Cephes-style
// polynomials, within ~2 float ulps of libm), so it differs from the scalar/CUDA/reference draws
// of the same (seed, offset) in the last float bits only. Without AVX2+FMA (or for the double
// stream, drawn for float64 batches) the scalar ff::standard_normal_pair is used.
#pragma once

#include <cstdint>

#include "cpu/cpu_features.h"
#include "flowfast/interpolant_math.h"

#if defined(FF_CPU_X86_SIMD)
#define FF_SIMD_NORMAL_AVX2 1
#endif

namespace ff {
namespace cpu {

#if defined(FF_SIMD_NORMAL_AVX2)
// 32x32 -> (hi, lo) for eight lanes: _mm256_mul_epu32 multiplies the even lanes only, so the odd
// lanes go through a second multiply after a 32-bit shift.
__attribute__((target("avx2,fma"))) inline void mulhilo8(__m256i a, __m256i b, __m256i* hi, __m256i* lo) {
  const __m256i even = _mm256_mul_epu32(a, b);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), _mm256_srli_epi64(b, 32));
  *lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  *hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}

// ff::philox4x32 on kStates x eight counters at once (state s, lane i: counter words x[s][0..3][i]).
// Several independent states per round hide the multiply latency of the serial round chain.
template <int kStates>
__attribute__((target("avx2,fma"))) inline void philox8(__m256i (*x)[4], uint32_t k0, uint32_t k1) {
  const __m256i mul0 = _mm256_set1_epi32(static_cast<int>(0xD2511F53u));
  const __m256i mul1 = _mm256_set1_epi32(static_cast<int>(0xCD9E8D57u));
  for (int round = 0; round < 10; ++round) {
    const __m256i key0 = _mm256_set1_epi32(static_cast<int>(k0));
    const __m256i key1 = _mm256_set1_epi32(static_cast<int>(k1));
    for (int s = 0; s < kStates; ++s) {
      __m256i hi0, lo0, hi1, lo1;
      mulhilo8(mul0, x[s][0], &hi0, &lo0);
      mulhilo8(mul1, x[s][2], &hi1, &lo1);
      x[s][0] = _mm256_xor_si256(_mm256_xor_si256(hi1, x[s][1]), key0);
      x[s][1] = lo1;
      x[s][2] = _mm256_xor_si256(_mm256_xor_si256(hi0, x[s][3]), key1);
      x[s][3] = lo0;
    }
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
}

// Natural log for finite x > 0 (normal floats): x = m 2^e with m in [sqrt(1/2), sqrt(2)), then
// log(m) = f - f^2/2 + f^3 P(f), f = m - 1, and e ln 2 added in two parts so it stays exact.
__attribute__((target("avx2,fma"))) inline __m256 log8(__m256 x) {
  const __m256i bits = _mm256_castps_si256(x);
  __m256i exponent = _mm256_sub_epi32(_mm256_srli_epi32(bits, 23), _mm256_set1_epi32(127));
  __m256 m = _mm256_castsi256_ps(
      _mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi32(0x007FFFFF)), _mm256_set1_epi32(0x3F800000)));
  const __m256 above = _mm256_cmp_ps(m, _mm256_set1_ps(1.41421356f), _CMP_GT_OQ);
  m = _mm256_blendv_ps(m, _mm256_mul_ps(m, _mm256_set1_ps(0.5f)), above);
  exponent = _mm256_sub_epi32(exponent, _mm256_castps_si256(above));  // mask lanes are -1
  const __m256 e = _mm256_cvtepi32_ps(exponent);
  const __m256 f = _mm256_sub_ps(m, _mm256_set1_ps(1.0f));
  static constexpr float kP[9] = {7.0376836292e-2f,  -1.1514610310e-1f, 1.1676998740e-1f,
                                  -1.2420140846e-1f, 1.4249322787e-1f,  -1.6668057665e-1f,
                                  2.0000714765e-1f,  -2.4999993993e-1f, 3.3333331174e-1f};
  __m256 p = _mm256_set1_ps(kP[0]);
  for (int i = 1; i < 9; ++i) p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kP[i]));
  const __m256 f2 = _mm256_mul_ps(f, f);
  __m256 y = _mm256_mul_ps(_mm256_mul_ps(f2, f), p);
  y = _mm256_fmadd_ps(e, _mm256_set1_ps(-2.12194440e-4f), y);
  y = _mm256_fnmadd_ps(f2, _mm256_set1_ps(0.5f), y);
  return _mm256_fmadd_ps(e, _mm256_set1_ps(0.693359375f), _mm256_add_ps(f, y));
}

// cos and sin of x in [0, 2 pi]: x = j pi/2 + r with |r| <= pi/4 (pi/2 in three parts), the two
// minimax polynomials on r, then the quadrant j mod 4 swaps and negates them.
__attribute__((target("avx2,fma"))) inline void sincos8(__m256 x, __m256* cos_out, __m256* sin_out) {
  const __m256 j = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(0.63661977236758134f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(j, _mm256_set1_ps(1.5703125f), x);
  r = _mm256_fnmadd_ps(j, _mm256_set1_ps(4.837512969970703125e-4f), r);
  r = _mm256_fnmadd_ps(j, _mm256_set1_ps(7.54978995489188216e-8f), r);
  const __m256 r2 = _mm256_mul_ps(r, r);
  __m256 s = _mm256_fmadd_ps(_mm256_set1_ps(-1.9515295891e-4f), r2, _mm256_set1_ps(8.3321608736e-3f));
  s = _mm256_fmadd_ps(s, r2, _mm256_set1_ps(-1.6666654611e-1f));
  s = _mm256_fmadd_ps(_mm256_mul_ps(s, r2), r, r);
  __m256 c = _mm256_fmadd_ps(_mm256_set1_ps(2.443315711809948e-5f), r2, _mm256_set1_ps(-1.388731625493765e-3f));
  c = _mm256_fmadd_ps(c, r2, _mm256_set1_ps(4.166664568298827e-2f));
  c = _mm256_fmadd_ps(_mm256_mul_ps(c, r2), r2, _mm256_fnmadd_ps(r2, _mm256_set1_ps(0.5f), _mm256_set1_ps(1.0f)));
  const __m256i quadrant = _mm256_cvtps_epi32(j);
  const __m256 swap = _mm256_castsi256_ps(
      _mm256_cmpeq_epi32(_mm256_and_si256(quadrant, _mm256_set1_epi32(1)), _mm256_set1_epi32(1)));
  const __m256 cos_base = _mm256_blendv_ps(c, s, swap);
  const __m256 sin_base = _mm256_blendv_ps(s, c, swap);
  // cos is negated in quadrants 1 and 2, sin in quadrants 2 and 3: flip the float sign bit.
  const __m256i q1 = _mm256_add_epi32(quadrant, _mm256_set1_epi32(1));
  const __m256 cos_sign = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_and_si256(q1, _mm256_set1_epi32(2)), 30));
  const __m256 sin_sign = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_and_si256(quadrant, _mm256_set1_epi32(2)), 30));
  *cos_out = _mm256_xor_ps(cos_base, cos_sign);
  *sin_out = _mm256_xor_ps(sin_base, sin_sign);
}

// Pairs first_pair .. first_pair + npairs - 1 into out[2i] (cos half) and out[2i + 1] (sin half).
// Whole vectors of eight are computed; the lanes past the end are dropped.
__attribute__((target("avx2,fma"))) inline void standard_normal_pairs_avx2(uint64_t seed, uint64_t offset,
                                                                          uint64_t first_pair, int64_t npairs,
                                                                          float* out) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const uint32_t c2 = static_cast<uint32_t>(offset), c3 = static_cast<uint32_t>(offset >> 32) ^ 0x9E3779B9u;
  const uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  const __m256 uniform_scale = _mm256_set1_ps(1.0f / 16777216.0f);
  constexpr int kStates = 2;  // 16 pairs per step
  for (int64_t i0 = 0; i0 < npairs; i0 += 8 * kStates) {
    __m256i x[kStates][4];
    for (int s = 0; s < kStates; ++s) {
      const uint32_t pair_lo = static_cast<uint32_t>(first_pair + static_cast<uint64_t>(i0 + 8 * s));
      const uint32_t pair_hi = static_cast<uint32_t>((first_pair + static_cast<uint64_t>(i0 + 8 * s)) >> 32);
      // The low counter word may wrap inside the vector: carry into the high word per lane.
      const __m256i low = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(pair_lo)), lane);
      const __m256i sign = _mm256_set1_epi32(static_cast<int>(0x80000000u));
      const __m256i wrapped = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(pair_lo ^ 0x80000000u)),
                                                 _mm256_xor_si256(low, sign));
      x[s][0] = low;
      x[s][1] = _mm256_sub_epi32(_mm256_set1_epi32(static_cast<int>(pair_hi)), wrapped);
      x[s][2] = _mm256_set1_epi32(static_cast<int>(c2));
      x[s][3] = _mm256_set1_epi32(static_cast<int>(c3));
    }
    philox8<kStates>(x, k0, k1);
    for (int s = 0; s < kStates; ++s) {
      const int64_t i = i0 + 8 * s;
      if (i >= npairs) break;
      const __m256 half = _mm256_set1_ps(0.5f);
      const __m256 u1 =
          _mm256_mul_ps(_mm256_add_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(x[s][0], 8)), half), uniform_scale);
      const __m256 u2 =
          _mm256_mul_ps(_mm256_add_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(x[s][2], 8)), half), uniform_scale);
      const __m256 radius = _mm256_sqrt_ps(_mm256_mul_ps(_mm256_set1_ps(-2.0f), log8(u1)));
      __m256 cs, sn;
      sincos8(_mm256_mul_ps(_mm256_set1_ps(6.283185307179586f), u2), &cs, &sn);
      const __m256 z0 = _mm256_mul_ps(radius, cs), z1 = _mm256_mul_ps(radius, sn);
      // Interleave (z0[i], z1[i]); unpack works within 128-bit halves, the permutes restore order.
      const __m256 lo = _mm256_unpacklo_ps(z0, z1), hi = _mm256_unpackhi_ps(z0, z1);
      const __m256 first = _mm256_permute2f128_ps(lo, hi, 0x20), second = _mm256_permute2f128_ps(lo, hi, 0x31);
      if (i + 8 <= npairs) {
        _mm256_storeu_ps(out + 2 * i, first);
        _mm256_storeu_ps(out + 2 * i + 8, second);
      } else {
        alignas(32) float lanes[16];
        _mm256_store_ps(lanes, first);
        _mm256_store_ps(lanes + 8, second);
        for (int64_t k = 0; k < 2 * (npairs - i); ++k) out[2 * i + k] = lanes[k];
      }
    }
  }
}
#endif

/// Normals of Box-Muller pairs first_pair .. first_pair + npairs - 1 of stream (seed, offset):
/// out[2i] and out[2i + 1] are the two halves of pair first_pair + i (ff::standard_normal_pair).
inline void standard_normal_pairs(uint64_t seed, uint64_t offset, uint64_t first_pair, int64_t npairs, float* out) {
#if defined(FF_SIMD_NORMAL_AVX2)
  if (has_avx2_fma()) return standard_normal_pairs_avx2(seed, offset, first_pair, npairs, out);
#endif
  for (int64_t i = 0; i < npairs; ++i)
    standard_normal_pair<float>(seed, offset, first_pair + static_cast<uint64_t>(i), out + 2 * i, out + 2 * i + 1);
}

inline void standard_normal_pairs(uint64_t seed, uint64_t offset, uint64_t first_pair, int64_t npairs, double* out) {
  for (int64_t i = 0; i < npairs; ++i)
    standard_normal_pair<double>(seed, offset, first_pair + static_cast<uint64_t>(i), out + 2 * i, out + 2 * i + 1);
}

}  // namespace cpu
}  // namespace ff
