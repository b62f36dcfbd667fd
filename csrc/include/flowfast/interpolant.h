// Kernel family `interpolant`: fused CFM path sampling and flow-matching loss (forward and
// backward) for every path of flowfast/interpolant_math.h, on (B, D) rows (any trailing shape
// flattened). CPU: csrc/cpu/interpolant_cpu.cpp. CUDA: csrc/cuda/interpolant_cuda.cu.
// Python: flowfast/ops/interpolant.py; reference: flowfast/reference/interpolant.py.
#pragma once

#include "flowfast/common.h"
#include "flowfast/interpolant_math.h"

namespace ff {

/// Noise is either read from `eps` (B, D) or, when eps.data is null, drawn by Philox with
/// counter = b * D + d under (seed, offset): then no noise tensor exists at all.
struct InterpolantInputs {
  TensorView x0, x1;  // (B, D), contiguous, same dtype
  TensorView t;       // (B,)
  TensorView eps;     // (B, D) or empty
  PathKind kind = PathKind::Linear;
  double sigma = 0.0;
  uint64_t seed = 0, offset = 0;
};

/// x_t (B, D) and, optionally, the noise used (B, D).
struct InterpolantSampleParams {
  InterpolantInputs in;
  TensorView xt;
  TensorView eps_out;  // optional
  void* stream = nullptr;
};

/// per_sample[b] = weight[b] * sum_d (v - u_t)^2 (forward); grad_v = 2 * grad[b] * weight[b] *
/// (v - u_t) (backward). u_t is recomputed from (x0, x1, t, noise), never stored.
struct InterpolantLossParams {
  InterpolantInputs in;
  TensorView v;           // (B, D) model output
  TensorView weight;      // (B,) or empty (= 1)
  TensorView per_sample;  // forward output (B,)
  TensorView grad;        // backward input (B,): d loss / d per_sample
  TensorView grad_v;      // backward output (B, D)
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
