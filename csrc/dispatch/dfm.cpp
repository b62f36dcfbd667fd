// Dispatch points of the `dfm` family: check what the kernels assume, then route by device.
#include <cmath>

#include "dispatch/checks.h"
#include "flowfast/dfm.h"

namespace ff {

using namespace dispatch;

namespace {

void check_vocab(int64_t vocab) {
  FF_CHECK(vocab >= 2 && vocab <= kDfmMaxVocab, "dfm: vocab must lie in [2, ", kDfmMaxVocab, "], got ", vocab);
}

void check_int(const TensorView& t, DType dtype, const TensorView& like, const char* what) {
  FF_CHECK(t.dtype == dtype, what, ": expected ", dtype_name(dtype), ", got ", dtype_name(t.dtype));
  FF_CHECK(t.device == like.device && t.device_index == like.device_index, what, ": on a different device");
  check_packed(t, what);
}

}  // namespace

void dfm_pack(const DfmPackParams& p) {
  check_vocab(p.vocab);
  check_view(p.tokens, "dfm: tokens", 2);
  check_int(p.tokens, DType::Int32, p.tokens, "dfm: tokens");
  const PackLayout L = pack_layout(p.vocab, p.tokens.shape[1]);
  check_shape(p.packed, "dfm: packed", {p.tokens.shape[0], L.words});
  check_int(p.packed, DType::Int64, p.tokens, "dfm: packed");
  if (p.tokens.numel() == 0) return;
  FF_ROUTE(p.tokens.device, "dfm", dfm_pack, p);
}

void dfm_inversion_step(const DfmStepParams& p) {
  check_vocab(p.vocab);
  check_view(p.x, "dfm: x", 2);
  check_int(p.x, DType::Int32, p.x, "dfm: x");
  const int64_t B = p.x.shape[0], D = p.x.shape[1];
  FF_CHECK(D >= 1, "dfm: sequences need at least one token");
  const PackLayout L = pack_layout(p.vocab, D);
  check_view(p.keys, "dfm: keys", 2);
  FF_CHECK(p.keys.shape[0] >= 1, "dfm: the training set (keys) is empty");
  check_shape(p.keys, "dfm: keys", {p.keys.shape[0], L.words});
  check_int(p.keys, DType::Int64, p.x, "dfm: keys");
  check_shape(p.x_packed, "dfm: x_packed", {B, L.words});
  check_int(p.x_packed, DType::Int64, p.x, "dfm: x_packed");
  check_shape(p.x_new, "dfm: x_new", {B, D});
  check_int(p.x_new, DType::Int32, p.x, "dfm: x_new");
  FF_CHECK(p.x_new.data != p.x.data || B == 0, "dfm: x_new must not alias x");
  if (p.posterior.data || p.posterior.ndim != 0) {
    check_shape(p.posterior, "dfm: posterior", {B, D});
    check_int(p.posterior, DType::Float32, p.x, "dfm: posterior");
  }
  if (p.best.data || p.best.ndim != 0) {
    check_shape(p.best, "dfm: best", {B});
    check_int(p.best, DType::Int32, p.x, "dfm: best");
  }
  FF_CHECK(std::isfinite(p.t) && std::isfinite(p.h) && p.h > 0 && p.h <= p.t && p.t <= 1,
           "dfm: the step needs 0 < h <= t <= 1, got t=", p.t, ", h=", p.h);
  FF_CHECK(std::isfinite(p.inv_tau) && p.inv_tau > 0, "dfm: 1/tau must be finite and positive, got ", p.inv_tau);
  if (B == 0) return;
  FF_ROUTE(p.x.device, "dfm", dfm_inversion_step, p);
}

}  // namespace ff
