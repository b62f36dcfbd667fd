// The one dispatch point per kernel family: validate what the kernels assume, then route to the
// CPU or CUDA implementation. Python validates first with friendlier messages; these checks are
// the last line of defence for callers that use flowfast._C directly (numpy, cupy, ...).
#include <cmath>
#include <utility>

#include "flowfast/assignment.h"
#include "flowfast/interpolant.h"
#include "flowfast/sinkhorn.h"

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

void check_shape(const TensorView& t, const char* what, std::initializer_list<int64_t> shape) {
  check_view(t, what, static_cast<int>(shape.size()));
  int k = 0;
  for (int64_t s : shape) {
    FF_CHECK(t.shape[k] == s, what, ": dim ", k, " has size ", t.shape[k], ", expected ", s);
    ++k;
  }
}

void check_float_like(const TensorView& t, const TensorView& like, const char* what) {
  FF_CHECK(t.dtype == like.dtype, what, ": dtype ", dtype_name(t.dtype), " differs from the problem's ",
           dtype_name(like.dtype));
  FF_CHECK(t.device == like.device && t.device_index == like.device_index, what, ": on a different device");
}

// Validates a Sinkhorn problem; returns the view whose dtype/device every other tensor must match.
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
    FF_CHECK(pr.x.strides[2] == 1 && pr.y.strides[2] == 1, "sinkhorn: x and y need unit stride in the feature dim");
    check_float_like(pr.y, ref, "sinkhorn: y");
    FF_CHECK(pr.x.shape[2] >= 1, "sinkhorn: point clouds need d >= 1 features");
  }
  FF_CHECK(ref.dtype == DType::Float32 || ref.dtype == DType::Float64, "sinkhorn: expected float32 or float64, got ",
           dtype_name(ref.dtype));
  const int64_t B = pr.batch(), n = pr.rows(), m = pr.cols();
  FF_CHECK(B > 0 && n > 0 && m > 0, "sinkhorn: empty problem");
  check_shape(pr.log_a, "sinkhorn: log_a", {B, n});
  check_shape(pr.log_b, "sinkhorn: log_b", {B, m});
  check_float_like(pr.log_a, ref, "sinkhorn: log_a");
  check_float_like(pr.log_b, ref, "sinkhorn: log_b");
  return ref;
}

void check_potentials(const SinkhornProblem& pr, const TensorView& ref, const TensorView& f, const TensorView& g) {
  if (f.data) {
    check_shape(f, "sinkhorn: f", {pr.batch(), pr.rows()});
    check_float_like(f, ref, "sinkhorn: f");
  }
  check_shape(g, "sinkhorn: g", {pr.batch(), pr.cols()});
  check_float_like(g, ref, "sinkhorn: g");
}

// The CUDA kernels index (B, k) vectors as b * k + i and the last dim of plan_y / plan_t_x with
// unit stride; the CPU kernels honour any strides.
void check_packed(const TensorView& t, const char* what) {
  if (!t.data) return;
  bool ok = true;
  int64_t expect = 1;
  for (int i = t.ndim - 1; i >= 0; --i) {
    if (t.shape[i] > 1 && t.strides[i] != expect) ok = false;
    expect *= t.shape[i];
  }
  FF_CHECK(ok, what, ": must be contiguous for the CUDA kernels");
}

void check_last_unit(const TensorView& t, const char* what) {
  FF_CHECK(!t.data || t.shape[t.ndim - 1] <= 1 || t.strides[t.ndim - 1] == 1, what,
           ": needs unit stride in its last dim for the CUDA kernels");
}

// float32 kernels run eps in float: it must neither flush to 0 nor overflow to inf.
void check_eps_range(DType dtype, double eps, const char* what) {
  if (dtype == DType::Float32) {
    FF_CHECK(eps >= 1e-30 && eps <= 1e30, what, " = ", eps, " is outside what float32 kernels can use");
  }
}

bool on_cuda(const TensorView& ref, const char* family) {
  if (ref.device == DeviceType::CPU) return false;
#if defined(FLOWFAST_WITH_CUDA)
  return true;
#else
  no_cuda(family);
#endif
}

// A packed (B, D) or (B,) tensor of `like`'s dtype and device (empty views allowed when optional).
void check_rows(const TensorView& t, const TensorView& like, const char* what, int ndim, bool optional) {
  if (optional && !t.data && t.ndim == 0) return;
  check_view(t, what, ndim);
  check_float_like(t, like, what);
  FF_CHECK(t.shape[0] == like.shape[0], what, ": has ", t.shape[0], " rows, expected ", like.shape[0]);
  if (ndim == 2) {
    FF_CHECK(t.shape[1] == like.shape[1], what, ": has ", t.shape[1], " features, expected ", like.shape[1]);
    FF_CHECK((t.strides[1] == 1 || t.shape[1] <= 1) && (t.strides[0] == t.shape[1] || t.shape[0] <= 1), what,
             ": must be contiguous");
  } else {
    FF_CHECK(t.strides[0] == 1 || t.shape[0] <= 1, what, ": must be contiguous");
  }
}

const TensorView& check_interpolant_inputs(const InterpolantInputs& in) {
  check_view(in.x0, "interpolant: x0", 2);
  FF_CHECK(in.x0.dtype == DType::Float32 || in.x0.dtype == DType::Float64 || in.x0.dtype == DType::Float16 ||
               in.x0.dtype == DType::BFloat16,
           "interpolant: expected float32, float64, float16 or bfloat16, got ", dtype_name(in.x0.dtype));
  check_rows(in.x0, in.x0, "interpolant: x0", 2, false);
  check_rows(in.x1, in.x0, "interpolant: x1", 2, false);
  check_rows(in.t, in.x0, "interpolant: t", 1, false);
  check_rows(in.eps, in.x0, "interpolant: eps", 2, true);
  FF_CHECK(static_cast<int32_t>(in.kind) >= 0 && static_cast<int32_t>(in.kind) <= 3, "interpolant: unknown path kind");
  FF_CHECK(std::isfinite(in.sigma) && in.sigma >= 0, "interpolant: sigma must be finite and >= 0");
  return in.x0;
}

}  // namespace

// Calls NAME_cuda(p) or NAME_cpu(p) by REF's device; CUDA memory in a CPU-only build is an error.
#if defined(FLOWFAST_WITH_CUDA)
#define FF_ROUTE(REF, FAMILY, NAME, P) ((on_cuda(REF, FAMILY)) ? NAME##_cuda(P) : NAME##_cpu(P))
#else
#define FF_ROUTE(REF, FAMILY, NAME, P) ((void)on_cuda(REF, FAMILY), NAME##_cpu(P))
#endif

void interpolant_sample(const InterpolantSampleParams& p) {
  const TensorView& ref = check_interpolant_inputs(p.in);
  check_rows(p.xt, ref, "interpolant: x_t", 2, false);
  check_rows(p.eps_out, ref, "interpolant: eps_out", 2, true);
  if (ref.numel() == 0) return;
  FF_ROUTE(ref, "interpolant", interpolant_sample, p);
}

void interpolant_loss_forward(const InterpolantLossParams& p) {
  const TensorView& ref = check_interpolant_inputs(p.in);
  check_rows(p.v, ref, "interpolant: v", 2, false);
  check_rows(p.weight, ref, "interpolant: weight", 1, true);
  check_rows(p.per_sample, ref, "interpolant: per-sample loss", 1, false);
  if (ref.shape[0] == 0) return;
  FF_ROUTE(ref, "interpolant", interpolant_loss_forward, p);
}

void interpolant_loss_backward(const InterpolantLossParams& p) {
  const TensorView& ref = check_interpolant_inputs(p.in);
  check_rows(p.v, ref, "interpolant: v", 2, false);
  check_rows(p.weight, ref, "interpolant: weight", 1, true);
  check_rows(p.grad, ref, "interpolant: grad", 1, false);
  check_rows(p.grad_v, ref, "interpolant: grad_v", 2, false);
  if (ref.numel() == 0) return;
  FF_ROUTE(ref, "interpolant", interpolant_loss_backward, p);
}

int64_t sinkhorn_workspace_bytes(DeviceType device, int64_t B, int64_t n, int64_t m) {
  if (device == DeviceType::CPU) return 0;
#if defined(FLOWFAST_WITH_CUDA)
  return sinkhorn_cuda_workspace_bytes(B, n, m);
#else
  (void)B, (void)n, (void)m;
  no_cuda("sinkhorn");
#endif
}

void sinkhorn_solve(const SinkhornParams& p) {
  const TensorView& ref = check_problem(p.problem);
  FF_CHECK(p.f.data != nullptr, "sinkhorn: f is required");
  check_potentials(p.problem, ref, p.f, p.g);
  check_shape(p.n_iter, "sinkhorn: n_iter", {p.problem.batch()});
  FF_CHECK(p.n_iter.dtype == DType::Int64, "sinkhorn: n_iter must be int64");
  check_shape(p.marginal_error, "sinkhorn: marginal_error", {p.problem.batch()});
  check_float_like(p.marginal_error, ref, "sinkhorn: marginal_error");
  FF_CHECK(std::isfinite(p.eps) && p.eps > 0, "sinkhorn: eps must be finite and > 0, got ", p.eps);
  FF_CHECK(std::isfinite(p.eps_start) && p.eps_start > 0, "sinkhorn: eps_start must be finite and > 0");
  FF_CHECK(p.eps_decay > 0 && p.eps_decay <= 1, "sinkhorn: eps_decay must be in (0, 1], got ", p.eps_decay);
  FF_CHECK(p.max_iter >= 0, "sinkhorn: max_iter must be >= 0");
  FF_CHECK(p.check_every >= 1, "sinkhorn: check_every must be >= 1");
  FF_CHECK(p.tol >= 0, "sinkhorn: tol must be >= 0");
#if defined(FLOWFAST_WITH_CUDA)
  if (ref.device == DeviceType::CUDA) {
    FF_CHECK(p.workspace_bytes >= sinkhorn_cuda_workspace_bytes(p.problem.batch(), p.problem.rows(), p.problem.cols()),
             "sinkhorn: CUDA workspace too small");
    for (auto [t, what] : {std::pair{&p.f, "sinkhorn: f"}, {&p.g, "sinkhorn: g"}, {&p.problem.log_a, "sinkhorn: log_a"},
                           {&p.problem.log_b, "sinkhorn: log_b"}, {&p.n_iter, "sinkhorn: n_iter"},
                           {&p.marginal_error, "sinkhorn: marginal_error"}}) {
      check_packed(*t, what);
    }
    check_eps_range(ref.dtype, p.eps, "sinkhorn: eps");
    check_eps_range(ref.dtype, p.eps_start, "sinkhorn: eps_start");
  }
#endif
  FF_ROUTE(ref, "sinkhorn", sinkhorn_solve, p);
}

void sinkhorn_plan(const SinkhornPlanParams& p) {
  const SinkhornProblem& pr = p.problem;
  const TensorView& ref = check_problem(pr);
  FF_CHECK(p.f.data != nullptr, "sinkhorn: f is required");
  check_potentials(pr, ref, p.f, p.g);
  FF_CHECK(std::isfinite(p.eps) && p.eps > 0, "sinkhorn: eps must be finite and > 0");
  const int64_t B = pr.batch(), n = pr.rows(), m = pr.cols(), d = pr.dim();
  if (p.plan.data) check_shape(p.plan, "sinkhorn: plan", {B, n, m}), check_float_like(p.plan, ref, "sinkhorn: plan");
  if (p.row_mass.data) check_shape(p.row_mass, "sinkhorn: row_mass", {B, n}), check_float_like(p.row_mass, ref, "row_mass");
  if (p.col_mass.data) check_shape(p.col_mass, "sinkhorn: col_mass", {B, m}), check_float_like(p.col_mass, ref, "col_mass");
  if (p.transport_cost.data) {
    check_shape(p.transport_cost, "sinkhorn: transport_cost", {B});
    check_float_like(p.transport_cost, ref, "sinkhorn: transport_cost");
  }
  FF_CHECK(!(p.plan_y.data || p.plan_t_x.data) || pr.geometry == SinkhornGeometry::SqEuclidean,
           "sinkhorn: plan_y / plan_t_x need point clouds (x, y)");
  if (p.plan_y.data) check_shape(p.plan_y, "sinkhorn: plan_y", {B, n, d}), check_float_like(p.plan_y, ref, "plan_y");
  if (p.plan_t_x.data) {
    check_shape(p.plan_t_x, "sinkhorn: plan_t_x", {B, m, d});
    check_float_like(p.plan_t_x, ref, "sinkhorn: plan_t_x");
  }
#if defined(FLOWFAST_WITH_CUDA)
  if (ref.device == DeviceType::CUDA) {
    for (auto [t, what] : {std::pair{&p.f, "sinkhorn: f"}, {&p.g, "sinkhorn: g"}, {&pr.log_a, "sinkhorn: log_a"},
                           {&pr.log_b, "sinkhorn: log_b"}, {&p.row_mass, "sinkhorn: row_mass"},
                           {&p.col_mass, "sinkhorn: col_mass"}, {&p.transport_cost, "sinkhorn: transport_cost"}}) {
      check_packed(*t, what);
    }
    check_last_unit(p.plan_y, "sinkhorn: plan_y");
    check_last_unit(p.plan_t_x, "sinkhorn: plan_t_x");
    check_eps_range(ref.dtype, p.eps, "sinkhorn: eps");
  }
#endif
  FF_ROUTE(ref, "sinkhorn", sinkhorn_plan, p);
}

void sinkhorn_sample(const SinkhornSampleParams& p) {
  const SinkhornProblem& pr = p.problem;
  const TensorView& ref = check_problem(pr);
  check_potentials(pr, ref, TensorView{}, p.g);
  FF_CHECK(std::isfinite(p.eps) && p.eps > 0, "sinkhorn: eps must be finite and > 0");
  check_shape(p.cols, "sinkhorn: sampled columns", {pr.batch(), pr.rows()});
  FF_CHECK(p.cols.dtype == DType::Int64, "sinkhorn: sampled columns must be int64");
#if defined(FLOWFAST_WITH_CUDA)
  if (ref.device == DeviceType::CUDA) {
    check_packed(p.g, "sinkhorn: g");
    check_packed(pr.log_b, "sinkhorn: log_b");
  }
#endif
  FF_ROUTE(ref, "sinkhorn", sinkhorn_sample, p);
}

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
