// Dispatch point of the `assignment` family: check what the kernels assume, then route by device.
#include "dispatch/checks.h"
#include "flowfast/assignment.h"

namespace ff {

using namespace dispatch;

int64_t assignment_workspace_bytes(DeviceType device, int64_t B, int64_t n, int64_t m) {
  return FF_ROUTE_WORKSPACE(device, "linear_assignment", assignment, B, n, m);
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
  if (on_cuda(p.cost.device, "linear_assignment")) {
    FF_CHECK(p.workspace_bytes >= assignment_workspace_bytes(p.cost.device, B, n, m),
             "linear_assignment: CUDA workspace too small");
  }
  FF_ROUTE(p.cost.device, "linear_assignment", assignment, p);
}

}  // namespace ff
