// Python entry points of the `simplex` family (flowfast/ops/simplex.py calls them).
#include "bindings/views.h"
#include "flowfast/simplex.h"

namespace ff::bind {

void bind_simplex(py::module_& m) {
  m.def("simplex_step", [](const py::tuple& logits, const py::tuple& x, const py::tuple& gamma, const py::tuple& x_new,
                           const py::object& argmax, const py::object& log_probs, uintptr_t stream) {
    SimplexStepParams p;
    p.logits = to_view(logits);
    p.x = to_view(x);
    p.gamma = to_view(gamma);
    p.x_new = to_view(x_new);
    p.argmax = to_view_or_empty(argmax);
    p.log_probs = to_view_or_empty(log_probs);
    p.stream = to_ptr(stream);
    call_released(&simplex_step, p);
  });
  // (kind, logits, logits_dot, target_logits, x|None, s, t, ce_weight, td_weight, min_one_minus_s)
  m.def("simplex_distill_loss", [](const py::tuple& problem, const py::tuple& loss, const py::object& grad_z,
                                   const py::object& grad_zdot, uintptr_t stream) {
    FF_CHECK(problem.size() == 10, "internal: simplex problem descriptor must have 10 fields");
    SimplexDistillParams p;
    p.kind = static_cast<DistillKind>(problem[0].cast<int32_t>());
    p.logits = to_view(problem[1].cast<py::tuple>());
    p.logits_dot = to_view(problem[2].cast<py::tuple>());
    p.target_logits = to_view(problem[3].cast<py::tuple>());
    p.x = to_view_or_empty(problem[4]);
    p.s = to_view(problem[5].cast<py::tuple>());
    p.t = to_view(problem[6].cast<py::tuple>());
    p.ce_weight = problem[7].cast<double>();
    p.td_weight = problem[8].cast<double>();
    p.min_one_minus_s = problem[9].cast<double>();
    p.loss = to_view(loss);
    p.grad_z = to_view_or_empty(grad_z);
    p.grad_zdot = to_view_or_empty(grad_zdot);
    p.stream = to_ptr(stream);
    call_released(&simplex_distill_loss, p);
  });
}

}  // namespace ff::bind
