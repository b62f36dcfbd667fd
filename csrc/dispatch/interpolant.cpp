// Dispatch points of the `interpolant` family: check what the kernels assume, then route by device.
#include <cmath>

#include "dispatch/checks.h"
#include "flowfast/interpolant.h"

namespace ff {

using namespace dispatch;

namespace {

// A packed (B, D) or (B,) tensor of `like`'s dtype and device (empty views allowed when optional).
void check_rows(const TensorView& t, const TensorView& like, const char* what, int ndim, bool optional) {
  if (optional && !t.data && t.ndim == 0) return;
  check_view(t, what, ndim);
  check_like(t, like, what);
  FF_CHECK(t.shape[0] == like.shape[0], what, ": has ", t.shape[0], " rows, expected ", like.shape[0]);
  if (ndim == 2) {
    FF_CHECK(t.shape[1] == like.shape[1], what, ": has ", t.shape[1], " features, expected ", like.shape[1]);
    FF_CHECK((t.strides[1] == 1 || t.shape[1] <= 1) && (t.strides[0] == t.shape[1] || t.shape[0] <= 1), what,
             ": must be contiguous");
  } else {
    FF_CHECK(t.strides[0] == 1 || t.shape[0] <= 1, what, ": must be contiguous");
  }
}

const TensorView& check_inputs(const InterpolantInputs& in) {
  check_view(in.x0, "interpolant: x0", 2);
  FF_CHECK(in.x0.dtype == DType::Float32 || in.x0.dtype == DType::Float64 || in.x0.dtype == DType::Float16 ||
               in.x0.dtype == DType::BFloat16,
           "interpolant: expected float32, float64, float16 or bfloat16, got ", dtype_name(in.x0.dtype));
  check_rows(in.x0, in.x0, "interpolant: x0", 2, false);
  check_rows(in.x1, in.x0, "interpolant: x1", 2, false);
  check_rows(in.t, in.x0, "interpolant: t", 1, false);
  check_rows(in.noise, in.x0, "interpolant: noise", 2, true);
  FF_CHECK(static_cast<int32_t>(in.kind) >= 0 && static_cast<int32_t>(in.kind) <= 3, "interpolant: unknown path kind");
  FF_CHECK(std::isfinite(in.sigma) && in.sigma >= 0, "interpolant: sigma must be finite and >= 0");
  return in.x0;
}

}  // namespace

void interpolant_sample(const InterpolantSampleParams& p) {
  const TensorView& ref = check_inputs(p.in);
  check_rows(p.xt, ref, "interpolant: x_t", 2, false);
  check_rows(p.noise_out, ref, "interpolant: noise_out", 2, true);
  if (ref.numel() == 0) return;
  FF_ROUTE(ref.device, "interpolant", interpolant_sample, p);
}

void interpolant_loss_forward(const InterpolantLossParams& p) {
  const TensorView& ref = check_inputs(p.in);
  check_rows(p.v, ref, "interpolant: v", 2, false);
  check_rows(p.weight, ref, "interpolant: weight", 1, true);
  check_rows(p.per_sample, ref, "interpolant: per-sample loss", 1, false);
  check_rows(p.grad_v, ref, "interpolant: grad_v", 2, true);
  FF_CHECK(std::isfinite(p.grad_scale), "interpolant: grad_scale must be finite");
  if (p.mean.data) {
    FF_CHECK(p.mean.numel() == 1 && p.mean.dtype == ref.dtype && p.mean.device == ref.device &&
                 p.mean.device_index == ref.device_index,
             "interpolant: mean must be one element of x0's dtype and device");
    FF_CHECK(ref.numel() > 0, "interpolant: the mean loss of an empty batch is undefined");
  }
  if (ref.shape[0] == 0) return;
  FF_ROUTE(ref.device, "interpolant", interpolant_loss_forward, p);
}

void interpolant_loss_backward(const InterpolantLossParams& p) {
  const TensorView& ref = check_inputs(p.in);
  check_rows(p.v, ref, "interpolant: v", 2, false);
  check_rows(p.weight, ref, "interpolant: weight", 1, true);
  check_rows(p.grad, ref, "interpolant: grad", 1, false);
  check_rows(p.grad_v, ref, "interpolant: grad_v", 2, false);
  if (ref.numel() == 0) return;
  FF_ROUTE(ref.device, "interpolant", interpolant_loss_backward, p);
}

}  // namespace ff
