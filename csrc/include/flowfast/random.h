// Counter-based random numbers shared by every kernel family, CPU and CUDA (Philox4x32-10,
// Salmon et al., SC'11): a (seed, offset, counter) triple draws the same numbers on both backends
// and in the pure-torch reference (flowfast/reference/_philox.py). Every stochastic kernel derives
// its counter from the logical index of the element it randomizes, never from threads.
//   uniform_open01 / uniform_open01_f   (0, 1) uniforms from Philox words
//   gumbel(seed, offset, index)         standard Gumbel (sinkhorn sampling)
//   standard_normal(seed, offset, k)    standard normal by Box-Muller (interpolant noise)
#pragma once

#include <cmath>
#include <cstdint>

#include "flowfast/common.h"

namespace ff {


struct PhiloxState {
  uint32_t x[4];
};

FF_HD uint32_t philox_mulhilo(uint32_t a, uint32_t b, uint32_t* hi) {
  const uint64_t product = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  *hi = static_cast<uint32_t>(product >> 32);
  return static_cast<uint32_t>(product);
}

/// Four independent 32-bit words for the 128-bit counter (c0..c3) under the 64-bit key.
FF_HD PhiloxState philox4x32(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  PhiloxState s{{c0, c1, c2, c3}};
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, hi1;
    const uint32_t lo0 = philox_mulhilo(kMul0, s.x[0], &hi0);
    const uint32_t lo1 = philox_mulhilo(kMul1, s.x[2], &hi1);
    s = PhiloxState{{hi1 ^ s.x[1] ^ k0, lo1, hi0 ^ s.x[3] ^ k1, lo0}};
    k0 += kWeyl0;
    k1 += kWeyl1;
  }
  return s;
}

/// Uniform double in the open interval (0, 1) from two 32-bit words (53 random bits).
FF_HD double uniform_open01(uint32_t hi, uint32_t lo) {
  const uint64_t bits = (static_cast<uint64_t>(hi) << 21) ^ (static_cast<uint64_t>(lo) >> 11);  // 53 bits
  return (static_cast<double>(bits & ((1ull << 53) - 1)) + 0.5) * (1.0 / 9007199254740992.0);
}

/// Standard Gumbel sample for logical element `index` of stream (seed, offset).
FF_HD double gumbel(uint64_t seed, uint64_t offset, uint64_t index) {
  const PhiloxState r = philox4x32(static_cast<uint32_t>(index), static_cast<uint32_t>(index >> 32),
                                   static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32),
                                   static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  return -log(-log(uniform_open01(r.x[0], r.x[1])));
}


/// Uniform in the open interval (0, 1) from one 32-bit word (24 random bits), float precision.
FF_HD float uniform_open01_f(uint32_t bits) { return (static_cast<float>(bits >> 8) + 0.5f) * (1.0f / 16777216.0f); }

/// Two standard normals for `pair` of stream (seed, offset): Box-Muller on one Philox4x32 draw
/// (r cos, r sin). A = double draws 53-bit uniforms; A = float draws 24-bit ones and runs the
/// transcendentals in float (the noise of float32 / 16-bit batches: ~4x cheaper, same statistics).
template <typename A>
FF_HD void standard_normal_pair(uint64_t seed, uint64_t offset, uint64_t pair, A* z0, A* z1) {
  const PhiloxState r = philox4x32(static_cast<uint32_t>(pair), static_cast<uint32_t>(pair >> 32),
                                   static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32) ^ 0x9E3779B9u,
                                   static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  A u1, u2;
  if constexpr (sizeof(A) == sizeof(double)) {
    u1 = uniform_open01(r.x[0], r.x[1]);
    u2 = uniform_open01(r.x[2], r.x[3]);
  } else {
    u1 = uniform_open01_f(r.x[0]);
    u2 = uniform_open01_f(r.x[2]);
  }
  // std:: overloads: float math for A = float on the host too (plain log(float) is ::log(double)).
  const A radius = std::sqrt(static_cast<A>(-2) * std::log(u1));
  const A angle = static_cast<A>(6.283185307179586) * u2;
  *z0 = radius * std::cos(angle);
  *z1 = radius * std::sin(angle);
}

/// Standard normal of element `index`: element 2p uses the cos half of pair p, 2p + 1 the sin half.
template <typename A>
FF_HD A standard_normal(uint64_t seed, uint64_t offset, uint64_t index) {
  A z0, z1;
  standard_normal_pair<A>(seed, offset, index >> 1, &z0, &z1);
  return (index & 1) ? z1 : z0;
}

}  // namespace ff
