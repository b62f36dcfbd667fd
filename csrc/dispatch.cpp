// The one dispatch point per kernel family: validate what the kernels assume, then route to the
// CPU or CUDA implementation. Python validates first with friendlier messages; these checks are
// the last line of defence for callers that use flowfast._C directly (numpy, cupy, ...).
#include "flowfast/assignment.h"

namespace ff {
namespace {

void check_view(const TensorView& t, const char* what, int ndim) {
  FF_CHECK(t.ndim == ndim, what, ": expected ", ndim, " dims, got ", t.ndim);
  for (int i = 0; i < ndim; ++i) FF_CHECK(t.shape[i] >= 0, what, ": negative size in dim ", i);
  FF_CHECK(t.data != nullptr || t.numel() == 0, what, ": null data pointer");
}

[[noreturn]] void no_cuda(const char* family) {
  FF_CHECK(false, family,
           ": got CUDA memory but this flowfast build has no CUDA kernels "
           "(rebuild with nvcc on PATH, or FLOWFAST_CUDA=ON to make a missing nvcc an error)");
}

}  // namespace

int64_t assignment_workspace_bytes(DeviceType device, int64_t B, int64_t n, int64_t m) {
  if (device == DeviceType::CPU) return 0;
#if defined(FLOWFAST_WITH_CUDA)
  return assignment_cuda_workspace_bytes(B, n, m);
#else
  (void)B, (void)n, (void)m;
  no_cuda("linear_assignment");
#endif
}

void assignment(const AssignmentParams& p) {
  check_view(p.cost, "linear_assignment: cost", 3);
  check_view(p.col_for_row, "linear_assignment: output", 2);
  const int64_t B = p.cost.shape[0], n = p.cost.shape[1], m = p.cost.shape[2];
  FF_CHECK(n <= m, "linear_assignment: cost must have n <= m (rows <= columns), got n=", n, ", m=", m);
  FF_CHECK(p.cost.dtype == DType::Float32 || p.cost.dtype == DType::Float64,
           "linear_assignment: cost must be float32 or float64, got ", dtype_name(p.cost.dtype));
  FF_CHECK(p.cost.strides[2] == 1 || m <= 1, "linear_assignment: cost must have unit stride in its last dim");
  FF_CHECK(p.col_for_row.dtype == DType::Int64, "linear_assignment: output must be int64");
  FF_CHECK(p.col_for_row.shape[0] == B && p.col_for_row.shape[1] == n,
           "linear_assignment: output must have shape (B, n)");
  FF_CHECK(p.col_for_row.strides[1] == 1 || n <= 1, "linear_assignment: output must be contiguous");
  FF_CHECK(p.col_for_row.strides[0] == n || B <= 1, "linear_assignment: output must be contiguous");
  FF_CHECK(p.cost.device == p.col_for_row.device, "linear_assignment: cost and output on different devices");
  if (B == 0 || n == 0) return;

  if (p.cost.device == DeviceType::CPU) {
    assignment_cpu(p);
    return;
  }
#if defined(FLOWFAST_WITH_CUDA)
  FF_CHECK(p.workspace_bytes >= assignment_cuda_workspace_bytes(B, n, m),
           "linear_assignment: CUDA workspace too small");
  assignment_cuda(p);
#else
  no_cuda("linear_assignment");
#endif
}

}  // namespace ff
