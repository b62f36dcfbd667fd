// What every family's dispatch file shares: the checks of what the kernels assume (shapes,
// dtypes, layouts), and the routing to the CPU or CUDA implementation. Python validates first,
// with messages that name the user's argument; these checks are the last line of defence for
// callers of flowfast._C itself (numpy, cupy, ...).
#pragma once

#include <initializer_list>

#include "flowfast/common.h"

namespace ff::dispatch {

inline void check_view(const TensorView& t, const char* what, int ndim) {
  FF_CHECK(t.ndim == ndim, what, ": expected ", ndim, " dims, got ", t.ndim);
  for (int i = 0; i < ndim; ++i) FF_CHECK(t.shape[i] >= 0, what, ": negative size in dim ", i);
  FF_CHECK(t.data != nullptr || t.numel() == 0, what, ": null data pointer");
}

inline void check_shape(const TensorView& t, const char* what, std::initializer_list<int64_t> shape) {
  check_view(t, what, static_cast<int>(shape.size()));
  int k = 0;
  for (int64_t s : shape) {
    FF_CHECK(t.shape[k] == s, what, ": dim ", k, " has size ", t.shape[k], ", expected ", s);
    ++k;
  }
}

/// Same dtype and device as `like` (the tensor that defines the problem).
inline void check_like(const TensorView& t, const TensorView& like, const char* what) {
  FF_CHECK(t.dtype == like.dtype, what, ": dtype ", dtype_name(t.dtype), " differs from the problem's ",
           dtype_name(like.dtype));
  FF_CHECK(t.device == like.device && t.device_index == like.device_index, what, ": on a different device");
}

/// Row-major packed (size-1 dims may have any stride): how the CUDA kernels index (B, k) vectors.
inline void check_packed(const TensorView& t, const char* what) {
  if (!t.data) return;
  bool ok = true;
  int64_t expect = 1;
  for (int i = t.ndim - 1; i >= 0; --i) {
    if (t.shape[i] > 1 && t.strides[i] != expect) ok = false;
    expect *= t.shape[i];
  }
  FF_CHECK(ok, what, ": must be contiguous for the CUDA kernels");
}

inline void check_last_unit(const TensorView& t, const char* what) {
  FF_CHECK(!t.data || t.shape[t.ndim - 1] <= 1 || t.strides[t.ndim - 1] == 1, what,
           ": needs unit stride in its last dim for the CUDA kernels");
}

[[noreturn]] inline void no_cuda(const char* family) {
  FF_CHECK(false, family,
           ": got CUDA memory but this flowfast build has no CUDA kernels "
           "(rebuild with nvcc on PATH, or FLOWFAST_CUDA=ON to make a missing nvcc an error)");
}

/// True for CUDA memory; CUDA memory in a build without CUDA kernels is an error.
inline bool on_cuda(DeviceType device, const char* family) {
  if (device == DeviceType::CPU) return false;
#if defined(FLOWFAST_WITH_CUDA)
  return true;
#else
  no_cuda(family);
#endif
}

}  // namespace ff::dispatch

// FF_ROUTE(device, "family", name, params): calls name_cuda(params) or name_cpu(params) by device.
#if defined(FLOWFAST_WITH_CUDA)
#define FF_ROUTE(DEVICE, FAMILY, NAME, P) \
  (::ff::dispatch::on_cuda(DEVICE, FAMILY) ? NAME##_cuda(P) : NAME##_cpu(P))
#else
#define FF_ROUTE(DEVICE, FAMILY, NAME, P) ((void)::ff::dispatch::on_cuda(DEVICE, FAMILY), NAME##_cpu(P))
#endif

// FF_ROUTE_WORKSPACE(device, "family", name, B, n, m): bytes of device scratch the CUDA kernels
// need (name_cuda_workspace_bytes), 0 on the CPU.
#if defined(FLOWFAST_WITH_CUDA)
#define FF_ROUTE_WORKSPACE(DEVICE, FAMILY, NAME, ...) \
  (::ff::dispatch::on_cuda(DEVICE, FAMILY) ? NAME##_cuda_workspace_bytes(__VA_ARGS__) : int64_t{0})
#else
#define FF_ROUTE_WORKSPACE(DEVICE, FAMILY, NAME, ...) ((void)::ff::dispatch::on_cuda(DEVICE, FAMILY), int64_t{0})
#endif
