// Python entry points of the `sinkhorn` family (flowfast/ops/sinkhorn.py calls them). A problem
// arrives as (geometry, cost|None, x|None, y|None, log_a, log_b).
#include "bindings/views.h"
#include "flowfast/sinkhorn.h"

namespace ff::bind {
namespace {

SinkhornProblem to_problem(const py::tuple& t) {
  FF_CHECK(t.size() == 6, "internal: sinkhorn problem descriptor must have 6 fields");
  SinkhornProblem pr;
  pr.geometry = static_cast<SinkhornGeometry>(t[0].cast<int32_t>());
  pr.cost = to_view_or_empty(t[1]);
  pr.x = to_view_or_empty(t[2]);
  pr.y = to_view_or_empty(t[3]);
  pr.log_a = to_view(t[4].cast<py::tuple>());
  pr.log_b = to_view(t[5].cast<py::tuple>());
  return pr;
}

}  // namespace

void bind_sinkhorn(py::module_& m) {
  m.def("sinkhorn_workspace_bytes", [](int32_t device, int64_t B, int64_t n, int64_t mm) {
    return sinkhorn_workspace_bytes(static_cast<DeviceType>(device), B, n, mm);
  });
  m.def("sinkhorn_solve",
        [](const py::tuple& problem, const py::tuple& f, const py::tuple& g, const py::tuple& n_iter,
           const py::tuple& marginal_error, double eps, double eps_start, double eps_decay, double reg_m,
           int64_t max_iter, int64_t check_every, double tol, uintptr_t workspace, int64_t workspace_bytes,
           uintptr_t stream) {
          SinkhornParams p;
          p.problem = to_problem(problem);
          p.f = to_view(f);
          p.g = to_view(g);
          p.n_iter = to_view(n_iter);
          p.marginal_error = to_view(marginal_error);
          p.eps = eps;
          p.eps_start = eps_start;
          p.eps_decay = eps_decay;
          p.reg_m = reg_m;
          p.max_iter = max_iter;
          p.check_every = check_every;
          p.tol = tol;
          p.workspace = to_ptr(workspace);
          p.workspace_bytes = workspace_bytes;
          p.stream = to_ptr(stream);
          const SinkhornProblem& pr = p.problem;
          call_long(&sinkhorn_solve, p, static_cast<double>(pr.batch()) * pr.rows() * pr.cols() * (pr.dim() + 1));
        });
  m.def("sinkhorn_plan",
        [](const py::tuple& problem, const py::tuple& f, const py::tuple& g, double eps, const py::object& plan,
           const py::object& row_mass, const py::object& col_mass, const py::object& transport_cost,
           const py::object& plan_y, const py::object& plan_t_x, uintptr_t stream) {
          SinkhornPlanParams p;
          p.problem = to_problem(problem);
          p.f = to_view(f);
          p.g = to_view(g);
          p.eps = eps;
          p.plan = to_view_or_empty(plan);
          p.row_mass = to_view_or_empty(row_mass);
          p.col_mass = to_view_or_empty(col_mass);
          p.transport_cost = to_view_or_empty(transport_cost);
          p.plan_y = to_view_or_empty(plan_y);
          p.plan_t_x = to_view_or_empty(plan_t_x);
          p.stream = to_ptr(stream);
          call_released(&sinkhorn_plan, p);
        });
  m.def("sinkhorn_sample", [](const py::tuple& problem, const py::tuple& g, double eps, uint64_t seed,
                              uint64_t offset, const py::tuple& cols, uintptr_t stream) {
    SinkhornSampleParams p;
    p.problem = to_problem(problem);
    p.g = to_view(g);
    p.eps = eps;
    p.seed = seed;
    p.offset = offset;
    p.cols = to_view(cols);
    p.stream = to_ptr(stream);
    call_released(&sinkhorn_sample, p);
  });
}

}  // namespace ff::bind
