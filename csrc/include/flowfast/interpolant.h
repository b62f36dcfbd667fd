// Kernel family `interpolant`: fused CFM path sampling and flow-matching loss (forward and
// backward) for every path of flowfast/interpolant_math.h, on (B, D) rows (any trailing shape
// flattened). CPU: csrc/cpu/interpolant_cpu.cpp. CUDA: csrc/cuda/interpolant_cuda.cu.
// Python: flowfast/ops/interpolant.py; reference: flowfast/reference/interpolant.py.
#pragma once

#include <type_traits>

#include "flowfast/common.h"
#include "flowfast/interpolant_math.h"

namespace ff {

/// Noise is either read from `noise` (B, D) or, when noise.data is null, drawn by Philox for element
/// k = b * D + d (pair k / 2, see standard_normal) under (seed, offset): then no noise tensor
/// exists at all.
struct InterpolantInputs {
  TensorView x0, x1;  // (B, D), contiguous, same dtype
  TensorView t;       // (B,)
  TensorView noise;     // (B, D) or empty
  PathKind kind = PathKind::Linear;
  double sigma = 0.0;
  uint64_t seed = 0, offset = 0;
};

/// Typed view of the inputs with the per-element formulas, shared by the CPU and CUDA kernels
/// (T: the storage type, float/double or each backend's 16-bit types).
template <typename T>
struct InterpolantRows {
  const T* x0;
  const T* x1;
  const T* t;
  const T* noise;
  int64_t B, D;
  PathKind kind;
  double sigma;
  uint64_t seed, offset;

  static InterpolantRows from(const InterpolantInputs& in) {
    return InterpolantRows{static_cast<const T*>(in.x0.data), static_cast<const T*>(in.x1.data),
                           static_cast<const T*>(in.t.data),  static_cast<const T*>(in.noise.data),
                           in.x0.shape[0],                    in.x0.shape[1],
                           in.kind,                           in.sigma,
                           in.seed,                           in.offset};
  }
  /// Precision of drawn noise: double for float64 batches, float otherwise.
  using NoiseT = typename std::conditional<sizeof(T) == sizeof(double), double, float>::type;

  FF_HD PathCoeffs coeffs(int64_t b) const { return path_coeffs(kind, static_cast<double>(t[b]), sigma); }
  FF_HD double interpolate(const PathCoeffs& c, int64_t k, double e) const {
    return c.a * static_cast<double>(x0[k]) + c.b * static_cast<double>(x1[k]) + c.c * e;
  }
  FF_HD double target(const PathCoeffs& c, int64_t k, double e) const {
    return c.da * static_cast<double>(x0[k]) + c.db * static_cast<double>(x1[k]) + c.dc * e;
  }
};

/// x_t (B, D) and, optionally, the noise used (B, D).
struct InterpolantSampleParams {
  InterpolantInputs in;
  TensorView xt;
  TensorView noise_out;  // optional
  void* stream = nullptr;
};

/// per_sample[b] = weight[b] * sum_d (v - u_t)^2 (forward); grad_v = 2 * grad[b] * weight[b] *
/// (v - u_t) (backward). u_t is recomputed from (x0, x1, t, noise), never stored. The forward can
/// also write, in the same pass, the gradient of grad_scale * sum_b per_sample[b] (a mean loss:
/// grad_scale = 1 / (B D)), so a training step's backward needs no second kernel, and the mean
/// loss sum_b per_sample[b] / (B D) itself (the stored per-sample values summed in double, rounded
/// once), so a training step needs no torch reduction either.
struct InterpolantLossParams {
  InterpolantInputs in;
  TensorView v;           // (B, D) model output
  TensorView weight;      // (B,) or empty (= 1)
  TensorView per_sample;  // forward output (B,)
  TensorView mean;        // forward output, optional: one element, sum_b per_sample[b] / (B D)
  TensorView grad;        // backward input (B,): d loss / d per_sample
  TensorView grad_v;      // backward output (B, D); forward: optional, 2 grad_scale weight[b] (v - u_t)
  double grad_scale = 0.0;  // forward with grad_v: d total / d per_sample[b], the same for every b
  void* stream = nullptr;
};

void interpolant_sample_cpu(const InterpolantSampleParams& p);
void interpolant_loss_forward_cpu(const InterpolantLossParams& p);
void interpolant_loss_backward_cpu(const InterpolantLossParams& p);
#if defined(FLOWFAST_WITH_CUDA)
void interpolant_sample_cuda(const InterpolantSampleParams& p);
void interpolant_loss_forward_cuda(const InterpolantLossParams& p);
void interpolant_loss_backward_cuda(const InterpolantLossParams& p);
#endif

void interpolant_sample(const InterpolantSampleParams& p);
void interpolant_loss_forward(const InterpolantLossParams& p);
void interpolant_loss_backward(const InterpolantLossParams& p);

}  // namespace ff
