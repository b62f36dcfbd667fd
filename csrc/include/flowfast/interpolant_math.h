// Per-element math of the `interpolant` family, shared by csrc/cpu/interpolant_cpu.cpp and
// csrc/cuda/interpolant_cuda.cu. Every CFM path is linear in (x0, x1, eps) once t is fixed:
//   x_t = a x0 + b x1 + c eps,    u_t = da x0 + db x1 + dc eps,
// so one coefficient set per sample drives both the sampling and the loss kernels, and the
// target u_t is recomputed wherever it is needed instead of being stored. Where a coefficient of
// eps is 0 (u_t of Linear and VP paths, x_t at sigma = 0) the kernels skip drawing the noise.
#pragma once

#include <cmath>
#include <cstdint>

#include "flowfast/common.h"
#include "flowfast/philox.h"

namespace ff {

/// Path families (flowfast/paths.py names): I-CFM and OT-CFM share Linear.
enum class PathKind : int32_t { Linear = 0, Bridge = 1, Target = 2, VariancePreserving = 3 };

struct PathCoeffs {
  double a, b, c;     // x_t = a x0 + b x1 + c eps
  double da, db, dc;  // u_t = da x0 + db x1 + dc eps
};

// SB-CFM divides by 2t(1-t); torchcfm's guard, kept so values agree with it.
constexpr double kBridgeGuard = 1e-8;
constexpr double kHalfPi = 1.5707963267948966;

FF_HD PathCoeffs path_coeffs(PathKind kind, double t, double sigma) {
  switch (kind) {
    case PathKind::Bridge: {
      const double s = sigma * sqrt(t * (1.0 - t));
      const double k = (1.0 - 2.0 * t) / (2.0 * t * (1.0 - t) + kBridgeGuard);
      return PathCoeffs{1.0 - t, t, s, -1.0, 1.0, k * s};
    }
    case PathKind::Target: {
      // x_t = t x1 + (1 - (1 - sigma) t) eps;  u_t = (x1 - (1 - sigma) x_t) / (1 - (1 - sigma) t)
      //     = x1 - (1 - sigma) eps.
      return PathCoeffs{0.0, t, 1.0 - (1.0 - sigma) * t, 0.0, 1.0, -(1.0 - sigma)};
    }
    case PathKind::VariancePreserving: {
      const double cs = cos(kHalfPi * t), sn = sin(kHalfPi * t);
      return PathCoeffs{cs, sn, sigma, -kHalfPi * sn, kHalfPi * cs, 0.0};
    }
    case PathKind::Linear:
    default:
      return PathCoeffs{1.0 - t, t, sigma, -1.0, 1.0, 0.0};
  }
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
