// Python entry points of the `assignment` family (flowfast/ops/assignment.py calls them).
#include "bindings/views.h"
#include "flowfast/assignment.h"

namespace ff::bind {

void bind_assignment(py::module_& m) {
  m.def("assignment_workspace_bytes", [](int32_t device, int64_t B, int64_t n, int64_t mm) {
    return assignment_workspace_bytes(static_cast<DeviceType>(device), B, n, mm);
  });
  m.def(
      "linear_assignment",
      [](const py::tuple& cost, const py::tuple& out, bool maximize, uintptr_t workspace, int64_t workspace_bytes,
         uintptr_t stream) {
        AssignmentParams p;
        p.cost = to_view(cost);
        p.col_for_row = to_view(out);
        p.maximize = maximize;
        p.workspace = to_ptr(workspace);
        p.workspace_bytes = workspace_bytes;
        p.stream = to_ptr(stream);
        call_long(&assignment, p, static_cast<double>(p.cost.shape[0]) * p.cost.shape[1] * p.cost.shape[2]);
      },
      py::arg("cost"), py::arg("out"), py::arg("maximize"), py::arg("workspace") = 0,
      py::arg("workspace_bytes") = 0, py::arg("stream") = 0);
}

}  // namespace ff::bind
