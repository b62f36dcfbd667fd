// Python entry points of the `interpolant` family (flowfast/ops/interpolant.py calls them).
#include "bindings/views.h"
#include "flowfast/interpolant.h"

namespace ff::bind {
namespace {

// (x0, x1, t, noise|None, kind, sigma, seed, offset)
InterpolantInputs to_inputs(const py::tuple& t) {
  FF_CHECK(t.size() == 8, "internal: interpolant inputs descriptor must have 8 fields");
  InterpolantInputs in;
  in.x0 = to_view(t[0].cast<py::tuple>());
  in.x1 = to_view(t[1].cast<py::tuple>());
  in.t = to_view(t[2].cast<py::tuple>());
  in.noise = to_view_or_empty(t[3]);
  in.kind = static_cast<PathKind>(t[4].cast<int32_t>());
  in.sigma = t[5].cast<double>();
  in.seed = t[6].cast<uint64_t>();
  in.offset = t[7].cast<uint64_t>();
  return in;
}

}  // namespace

void bind_interpolant(py::module_& m) {
  m.def("interpolant_sample",
        [](const py::tuple& inputs, const py::tuple& xt, const py::object& noise_out, uintptr_t stream) {
          InterpolantSampleParams p;
          p.in = to_inputs(inputs);
          p.xt = to_view(xt);
          p.noise_out = to_view_or_empty(noise_out);
          p.stream = to_ptr(stream);
          call_released(&interpolant_sample, p);
        });
  m.def("interpolant_loss_forward", [](const py::tuple& inputs, const py::tuple& v, const py::object& weight,
                                       const py::tuple& per_sample, const py::object& grad_v, double grad_scale,
                                       const py::object& mean, uintptr_t stream) {
    InterpolantLossParams p;
    p.in = to_inputs(inputs);
    p.v = to_view(v);
    p.weight = to_view_or_empty(weight);
    p.per_sample = to_view(per_sample);
    p.grad_v = to_view_or_empty(grad_v);
    p.grad_scale = grad_scale;
    p.mean = to_view_or_empty(mean);
    p.stream = to_ptr(stream);
    call_released(&interpolant_loss_forward, p);
  });
  m.def("interpolant_loss_backward", [](const py::tuple& inputs, const py::tuple& v, const py::object& weight,
                                        const py::tuple& grad, const py::tuple& grad_v, uintptr_t stream) {
    InterpolantLossParams p;
    p.in = to_inputs(inputs);
    p.v = to_view(v);
    p.weight = to_view_or_empty(weight);
    p.grad = to_view(grad);
    p.grad_v = to_view(grad_v);
    p.stream = to_ptr(stream);
    call_released(&interpolant_loss_backward, p);
  });
}

}  // namespace ff::bind
