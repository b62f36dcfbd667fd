// Per-element math of the `interpolant` family, shared by csrc/cpu/interpolant_cpu.cpp and
// csrc/cuda/interpolant_cuda.cu. Every CFM path is linear in (x0, x1, noise) once t is fixed:
//   x_t = a x0 + b x1 + c noise,    u_t = da x0 + db x1 + dc noise,
// so one coefficient set per sample drives both the sampling and the loss kernels, and the
// target u_t is recomputed wherever it is needed instead of being stored. Where a coefficient of
// noise is 0 (u_t of Linear and VP paths, x_t at sigma = 0) the kernels skip drawing the noise.
#pragma once

#include <cmath>
#include <cstdint>

#include "flowfast/common.h"
#include "flowfast/random.h"

namespace ff {

/// Path families (flowfast/paths.py names): I-CFM and OT-CFM share Linear.
enum class PathKind : int32_t { Linear = 0, Bridge = 1, Target = 2, VariancePreserving = 3 };

struct PathCoeffs {
  double a, b, c;     // x_t = a x0 + b x1 + c noise
  double da, db, dc;  // u_t = da x0 + db x1 + dc noise
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
      // x_t = t x1 + (1 - (1 - sigma) t) noise;  u_t = (x1 - (1 - sigma) x_t) / (1 - (1 - sigma) t)
      //     = x1 - (1 - sigma) noise.
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

}  // namespace ff
