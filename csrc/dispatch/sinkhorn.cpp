// Dispatch points of the `sinkhorn` family: check what the kernels assume, then route by device.
// The CPU kernels honour any strides; the CUDA kernels index (B, k) vectors as b * k + i and the
// feature dim of x, y, plan_y, plan_t_x with unit stride.
#include <cmath>
#include <utility>

#include "dispatch/checks.h"
#include "flowfast/sinkhorn.h"

namespace ff {

using namespace dispatch;

namespace {

// Validates a problem; returns the view whose dtype/device every other tensor must match.
const TensorView& check_problem(const SinkhornProblem& pr) {
  const bool dense = pr.geometry == SinkhornGeometry::Dense;
  FF_CHECK(dense || pr.geometry == SinkhornGeometry::SqEuclidean, "sinkhorn: unknown geometry");
  const TensorView& ref = dense ? pr.cost : pr.x;
  if (dense) {
    check_view(pr.cost, "sinkhorn: cost", 3);
  } else {
    check_view(pr.x, "sinkhorn: x", 3);
    check_view(pr.y, "sinkhorn: y", 3);
    FF_CHECK(pr.y.shape[0] == pr.x.shape[0] && pr.y.shape[2] == pr.x.shape[2],
             "sinkhorn: x (B, n, d) and y (B, m, d) must share B and d");
    FF_CHECK((pr.x.strides[2] == 1 || pr.x.shape[2] <= 1) && (pr.y.strides[2] == 1 || pr.y.shape[2] <= 1),
             "sinkhorn: x and y need unit stride in the feature dim");
    check_like(pr.y, ref, "sinkhorn: y");
    FF_CHECK(pr.x.shape[2] >= 1, "sinkhorn: point clouds need d >= 1 features");
  }
  FF_CHECK(ref.dtype == DType::Float32 || ref.dtype == DType::Float64, "sinkhorn: expected float32 or float64, got ",
           dtype_name(ref.dtype));
  const int64_t B = pr.batch(), n = pr.rows(), m = pr.cols();
  FF_CHECK(B > 0 && n > 0 && m > 0, "sinkhorn: empty problem");
  check_shape(pr.log_a, "sinkhorn: log_a", {B, n});
  check_shape(pr.log_b, "sinkhorn: log_b", {B, m});
  check_like(pr.log_a, ref, "sinkhorn: log_a");
  check_like(pr.log_b, ref, "sinkhorn: log_b");
  return ref;
}

void check_potentials(const SinkhornProblem& pr, const TensorView& ref, const TensorView& f, const TensorView& g) {
  if (f.data) {
    check_shape(f, "sinkhorn: f", {pr.batch(), pr.rows()});
    check_like(f, ref, "sinkhorn: f");
  }
  check_shape(g, "sinkhorn: g", {pr.batch(), pr.cols()});
  check_like(g, ref, "sinkhorn: g");
}

/// An optional output: absent, or of the given shape and the problem's dtype and device.
void check_output(const TensorView& t, const TensorView& ref, const char* what, std::initializer_list<int64_t> shape) {
  if (!t.data) return;
  check_shape(t, what, shape);
  check_like(t, ref, what);
}

void check_eps(double eps, const char* what) {
  FF_CHECK(std::isfinite(eps) && eps > 0, "sinkhorn: ", what, " must be finite and > 0, got ", eps);
}

// float32 kernels run eps in float: it must neither flush to 0 nor overflow to inf.
void check_eps_range(DType dtype, double eps, const char* what) {
  if (dtype == DType::Float32) {
    FF_CHECK(eps >= 1e-30 && eps <= 1e30, what, " = ", eps, " is outside what float32 kernels can use");
  }
}

void check_all_packed(std::initializer_list<std::pair<const TensorView*, const char*>> tensors) {
  for (auto [t, what] : tensors) check_packed(*t, what);
}

}  // namespace

int64_t sinkhorn_workspace_bytes(DeviceType device, int64_t B, int64_t n, int64_t m) {
  return FF_ROUTE_WORKSPACE(device, "sinkhorn", sinkhorn, B, n, m);
}

void sinkhorn_solve(const SinkhornParams& p) {
  const TensorView& ref = check_problem(p.problem);
  FF_CHECK(p.f.data != nullptr, "sinkhorn: f is required");
  check_potentials(p.problem, ref, p.f, p.g);
  check_shape(p.n_iter, "sinkhorn: n_iter", {p.problem.batch()});
  FF_CHECK(p.n_iter.dtype == DType::Int64, "sinkhorn: n_iter must be int64");
  check_shape(p.marginal_error, "sinkhorn: marginal_error", {p.problem.batch()});
  check_like(p.marginal_error, ref, "sinkhorn: marginal_error");
  check_eps(p.eps, "eps");
  check_eps(p.eps_start, "eps_start");
  FF_CHECK(p.eps_decay > 0 && p.eps_decay <= 1, "sinkhorn: eps_decay must be in (0, 1], got ", p.eps_decay);
  FF_CHECK(p.max_iter >= 0, "sinkhorn: max_iter must be >= 0");
  FF_CHECK(p.check_every >= 1, "sinkhorn: check_every must be >= 1");
  FF_CHECK(p.tol >= 0, "sinkhorn: tol must be >= 0");
  if (on_cuda(ref.device, "sinkhorn")) {
    FF_CHECK(p.workspace_bytes >= sinkhorn_workspace_bytes(ref.device, p.problem.batch(), p.problem.rows(),
                                                           p.problem.cols()),
             "sinkhorn: CUDA workspace too small");
    check_all_packed({{&p.f, "sinkhorn: f"}, {&p.g, "sinkhorn: g"}, {&p.problem.log_a, "sinkhorn: log_a"},
                      {&p.problem.log_b, "sinkhorn: log_b"}, {&p.n_iter, "sinkhorn: n_iter"},
                      {&p.marginal_error, "sinkhorn: marginal_error"}});
    check_eps_range(ref.dtype, p.eps, "sinkhorn: eps");
    check_eps_range(ref.dtype, p.eps_start, "sinkhorn: eps_start");
  }
  FF_ROUTE(ref.device, "sinkhorn", sinkhorn_solve, p);
}

void sinkhorn_plan(const SinkhornPlanParams& p) {
  const SinkhornProblem& pr = p.problem;
  const TensorView& ref = check_problem(pr);
  FF_CHECK(p.f.data != nullptr, "sinkhorn: f is required");
  check_potentials(pr, ref, p.f, p.g);
  check_eps(p.eps, "eps");
  const int64_t B = pr.batch(), n = pr.rows(), m = pr.cols(), d = pr.dim();
  check_output(p.plan, ref, "sinkhorn: plan", {B, n, m});
  check_output(p.row_mass, ref, "sinkhorn: row_mass", {B, n});
  check_output(p.col_mass, ref, "sinkhorn: col_mass", {B, m});
  check_output(p.transport_cost, ref, "sinkhorn: transport_cost", {B});
  FF_CHECK(!(p.plan_y.data || p.plan_t_x.data) || pr.geometry == SinkhornGeometry::SqEuclidean,
           "sinkhorn: plan_y / plan_t_x need point clouds (x, y)");
  check_output(p.plan_y, ref, "sinkhorn: plan_y", {B, n, d});
  check_output(p.plan_t_x, ref, "sinkhorn: plan_t_x", {B, m, d});
  if (on_cuda(ref.device, "sinkhorn")) {
    check_all_packed({{&p.f, "sinkhorn: f"}, {&p.g, "sinkhorn: g"}, {&pr.log_a, "sinkhorn: log_a"},
                      {&pr.log_b, "sinkhorn: log_b"}, {&p.row_mass, "sinkhorn: row_mass"},
                      {&p.col_mass, "sinkhorn: col_mass"}, {&p.transport_cost, "sinkhorn: transport_cost"}});
    check_last_unit(p.plan_y, "sinkhorn: plan_y");
    check_last_unit(p.plan_t_x, "sinkhorn: plan_t_x");
    check_eps_range(ref.dtype, p.eps, "sinkhorn: eps");
  }
  FF_ROUTE(ref.device, "sinkhorn", sinkhorn_plan, p);
}

void sinkhorn_sample(const SinkhornSampleParams& p) {
  const SinkhornProblem& pr = p.problem;
  const TensorView& ref = check_problem(pr);
  check_potentials(pr, ref, TensorView{}, p.g);
  check_eps(p.eps, "eps");
  check_shape(p.cols, "sinkhorn: sampled columns", {pr.batch(), pr.rows()});
  FF_CHECK(p.cols.dtype == DType::Int64, "sinkhorn: sampled columns must be int64");
  if (on_cuda(ref.device, "sinkhorn")) {
    check_all_packed({{&p.g, "sinkhorn: g"}, {&pr.log_b, "sinkhorn: log_b"}});
  }
  FF_ROUTE(ref.device, "sinkhorn", sinkhorn_sample, p);
}

}  // namespace ff
