// Kernel family `simplex`: flow maps towards the probability simplex (categorical flow maps).
// Rows are positions: logits, states and tangents are (R, V) with R = batch * sequence length,
// one softmax over V per row. Two kernels:
//   simplex_step:          x_new = x + gamma (softmax(z) - x), optional argmax and log softmax
//   simplex_distill_loss:  per-row ECLD or CSD loss of (z, dz/dt, target logits), and optionally
//                          its gradients in z and dz/dt (forward and backward in one launch)
// Per-element formulas: flowfast/simplex_math.h. CPU: csrc/cpu/simplex_cpu.cpp. CUDA:
// csrc/cuda/simplex_cuda.cu. Python: flowfast/ops/simplex.py; reference: flowfast/reference/simplex.py.
#pragma once

#include "flowfast/common.h"
#include "flowfast/simplex_math.h"

namespace ff {

/// One flow-map (or Euler) step per row r: x_new[r] = x[r] + gamma[r] (softmax(z[r]) - x[r]).
/// z, x, x_new: (R, V) of one dtype (x_new may be x itself); gamma: (R,) float64 for float64
/// rows, float32 otherwise. argmax (R,) int64 (lowest index among ties) and log_probs (R, V) are
/// optional outputs (empty views skip them).
struct SimplexStepParams {
  TensorView logits, x, gamma;
  TensorView x_new, argmax, log_probs;
  void* stream = nullptr;
};

/// Per-row distillation loss with times s[r] <= t[r] (R,) in the accumulation dtype (as gamma).
/// kind = Ecld: ce_weight CE(softmax(target), softmax(z)) + td_weight gamma^2 |d/dt softmax(z)|^2.
/// kind = Csd:  |(1 - t) dX/dt - (softmax(target) - X)|^2 with X = x + gamma (softmax(z) - x)
///              (x: the state x_s, required) and dX/dt = (softmax(z) - x) / (1 - s) + gamma d/dt softmax(z).
/// gamma = (t - s) / max(1 - s, min_one_minus_s). The target is a stop-gradient. loss: (R,) in
/// the accumulation dtype. grad_z / grad_zdot (R, V) in the rows' dtype: d loss[r] / d z[r],
/// d loss[r] / d zdot[r] (unit upstream; the caller scales rows), written when given.
struct SimplexDistillParams {
  DistillKind kind = DistillKind::Ecld;
  TensorView logits, logits_dot, target_logits, x;  // x: empty for Ecld
  TensorView s, t;
  double ce_weight = 4.0, td_weight = 2.0, min_one_minus_s = 0.05;
  TensorView loss, grad_z, grad_zdot;
  void* stream = nullptr;
};

void simplex_step_cpu(const SimplexStepParams& p);
void simplex_distill_loss_cpu(const SimplexDistillParams& p);
#if defined(FLOWFAST_WITH_CUDA)
void simplex_step_cuda(const SimplexStepParams& p);
void simplex_distill_loss_cuda(const SimplexDistillParams& p);
#endif

void simplex_step(const SimplexStepParams& p);
void simplex_distill_loss(const SimplexDistillParams& p);

}  // namespace ff
