// Dispatch points of the `simplex` family: check what the kernels assume, then route by device.
#include <cmath>

#include "dispatch/checks.h"
#include "flowfast/simplex.h"

namespace ff {

using namespace dispatch;

namespace {

bool is_kernel_dtype(DType d) {
  return d == DType::Float32 || d == DType::Float64 || d == DType::Float16 || d == DType::BFloat16;
}

/// Accumulation dtype of rows stored as `d` (the dtype of gamma, s, t and the loss).
DType accumulation_dtype(DType d) { return d == DType::Float64 ? DType::Float64 : DType::Float32; }

const TensorView& check_logits(const TensorView& logits) {
  check_view(logits, "simplex: logits", 2);
  FF_CHECK(is_kernel_dtype(logits.dtype), "simplex: expected float32, float64, float16 or bfloat16 logits, got ",
           dtype_name(logits.dtype));
  FF_CHECK(logits.shape[1] >= 1, "simplex: rows need at least one class");
  check_packed(logits, "simplex: logits");
  return logits;
}

/// (R, V) rows like the logits; optional ones may be empty views.
void check_rows(const TensorView& t, const TensorView& like, const char* what, bool optional) {
  if (optional && !t.data && t.ndim == 0) return;
  check_shape(t, what, {like.shape[0], like.shape[1]});
  check_like(t, like, what);
  check_packed(t, what);
}

/// (R,) per-row vector of the given dtype on the logits' device.
void check_per_row(const TensorView& t, const TensorView& like, DType dtype, const char* what, bool optional) {
  if (optional && !t.data && t.ndim == 0) return;
  check_shape(t, what, {like.shape[0]});
  FF_CHECK(t.dtype == dtype, what, ": expected ", dtype_name(dtype), ", got ", dtype_name(t.dtype));
  FF_CHECK(t.device == like.device && t.device_index == like.device_index, what, ": on a different device");
  check_packed(t, what);
}

}  // namespace

void simplex_step(const SimplexStepParams& p) {
  const TensorView& z = check_logits(p.logits);
  check_rows(p.x, z, "simplex: x", false);
  check_rows(p.x_new, z, "simplex: x_new", false);
  check_rows(p.log_probs, z, "simplex: log_probs", true);
  check_per_row(p.gamma, z, accumulation_dtype(z.dtype), "simplex: gamma", false);
  check_per_row(p.argmax, z, DType::Int64, "simplex: argmax", true);
  if (z.numel() == 0) return;
  FF_ROUTE(z.device, "simplex", simplex_step, p);
}

void simplex_distill_loss(const SimplexDistillParams& p) {
  const TensorView& z = check_logits(p.logits);
  FF_CHECK(p.kind == DistillKind::Ecld || p.kind == DistillKind::Csd, "simplex: unknown distillation kind");
  check_rows(p.logits_dot, z, "simplex: logits_dot", false);
  check_rows(p.target_logits, z, "simplex: target_logits", false);
  check_rows(p.x, z, "simplex: x", p.kind == DistillKind::Ecld);
  const DType acc = accumulation_dtype(z.dtype);
  check_per_row(p.s, z, acc, "simplex: s", false);
  check_per_row(p.t, z, acc, "simplex: t", false);
  check_per_row(p.loss, z, acc, "simplex: loss", false);
  const bool grads = p.grad_z.data || p.grad_z.ndim != 0;
  check_rows(p.grad_z, z, "simplex: grad_z", !grads);
  check_rows(p.grad_zdot, z, "simplex: grad_zdot", !grads);
  FF_CHECK(std::isfinite(p.ce_weight) && std::isfinite(p.td_weight), "simplex: loss weights must be finite");
  FF_CHECK(std::isfinite(p.min_one_minus_s) && p.min_one_minus_s > 0 && p.min_one_minus_s <= 1,
           "simplex: min_one_minus_s must lie in (0, 1]");
  if (z.numel() == 0) return;
  FF_ROUTE(z.device, "simplex", simplex_distill_loss, p);
}

}  // namespace ff
