// THE pybind11 module, flowfast._C. Arrays arrive as plain tuples built by flowfast/_arrays.py:
// (data_ptr, dtype_code, device_type, device_index, shape, strides). Streams arrive as integers.
// Long-running kernels release the GIL.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

#include "flowfast/assignment.h"
#include "flowfast/interpolant.h"
#include "flowfast/sinkhorn.h"

#if defined(FLOWFAST_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif
#if defined(FLOWFAST_CUDA_EMULATION)  // defined by the emulation's cuda_runtime_api.h
#include "emu_controls.h"
#endif

namespace py = pybind11;

namespace {

ff::TensorView to_view(const py::tuple& t) {
  FF_CHECK(t.size() == 6, "internal: array descriptor must have 6 fields");
  ff::TensorView v;
  v.data = reinterpret_cast<void*>(t[0].cast<uintptr_t>());
  v.dtype = static_cast<ff::DType>(t[1].cast<int32_t>());
  v.device = static_cast<ff::DeviceType>(t[2].cast<int32_t>());
  v.device_index = t[3].cast<int32_t>();
  auto shape = t[4].cast<std::vector<int64_t>>();
  auto strides = t[5].cast<std::vector<int64_t>>();
  FF_CHECK(shape.size() == strides.size() && shape.size() <= static_cast<size_t>(ff::kMaxDims),
           "internal: array descriptor has inconsistent or too many dims");
  v.ndim = static_cast<int32_t>(shape.size());
  for (int i = 0; i < v.ndim; ++i) {
    v.shape[i] = shape[i];
    v.strides[i] = strides[i];
  }
  return v;
}

// None -> an empty view (kernels treat a null data pointer as "output not requested").
ff::TensorView to_view_or_empty(const py::object& o) {
  if (o.is_none()) return ff::TensorView{};
  return to_view(o.cast<py::tuple>());
}

ff::SinkhornProblem to_problem(const py::tuple& t) {
  FF_CHECK(t.size() == 6, "internal: sinkhorn problem descriptor must have 6 fields");
  ff::SinkhornProblem pr;
  pr.geometry = static_cast<ff::SinkhornGeometry>(t[0].cast<int32_t>());
  pr.cost = to_view_or_empty(t[1]);
  pr.x = to_view_or_empty(t[2]);
  pr.y = to_view_or_empty(t[3]);
  pr.log_a = to_view(t[4].cast<py::tuple>());
  pr.log_b = to_view(t[5].cast<py::tuple>());
  return pr;
}

// (x0, x1, t, eps|None, kind, sigma, seed, offset)
ff::InterpolantInputs to_interpolant_inputs(const py::tuple& t) {
  FF_CHECK(t.size() == 8, "internal: interpolant inputs descriptor must have 8 fields");
  ff::InterpolantInputs in;
  in.x0 = to_view(t[0].cast<py::tuple>());
  in.x1 = to_view(t[1].cast<py::tuple>());
  in.t = to_view(t[2].cast<py::tuple>());
  in.eps = to_view_or_empty(t[3]);
  in.kind = static_cast<ff::PathKind>(t[4].cast<int32_t>());
  in.sigma = t[5].cast<double>();
  in.seed = t[6].cast<uint64_t>();
  in.offset = t[7].cast<uint64_t>();
  return in;
}

bool cuda_runtime_available() {
#if defined(FLOWFAST_WITH_CUDA)
  int count = 0;
  // A missing or too-old driver makes this fail instead of crashing: the CPU path stays usable.
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return count > 0;
#else
  return false;
#endif
}

py::dict build_info() {
  py::dict d;
#if defined(FLOWFAST_WITH_CUDA)
  d["cuda_compiled"] = true;
  d["cuda_version"] = CUDART_VERSION;
  d["archs"] = std::string(FLOWFAST_CUDA_ARCH_LIST);
#else
  d["cuda_compiled"] = false;
  d["cuda_version"] = py::none();
  d["archs"] = std::string();
#endif
#if defined(FLOWFAST_WITH_OPENMP)
  d["openmp"] = true;
#else
  d["openmp"] = false;
#endif
  return d;
}

}  // namespace

// The product module is flowfast._C; the test-only SIMT emulation builds (cmake/emulation.cmake)
// compile this same file as _C_emu_race / _C_emu_asan.
#ifndef FLOWFAST_MODULE_NAME
#define FLOWFAST_MODULE_NAME _C
#endif

PYBIND11_MODULE(FLOWFAST_MODULE_NAME, m) {
  m.doc() = "flowfast kernel core (torch-free; see flowfast/ops for the torch layer)";
  py::register_exception<ff::Error>(m, "KernelError", PyExc_ValueError);

  m.def("build_info", &build_info);
#if defined(FLOWFAST_CUDA_EMULATION)
  m.def("emu_set_schedule_seed", &ff_emu::set_schedule_seed, py::arg("seed"));
  m.def("emu_race_detector", &ff_emu::race_detector_enabled);
  m.def("emu_selftest", &ff_emu::run_selftest, py::arg("name"));
  m.def("emu_reset_stats", &ff_emu::reset_stats);
  m.def("emu_stats", [] {
    const ff_emu::Stats s = ff_emu::stats();
    py::dict d;
    d["launches"] = s.launches;
    d["failed_launches"] = s.failed_launches;
    d["blocks"] = s.blocks;
    d["threads"] = s.threads;
    d["barriers"] = s.barriers;
    d["warp_ops"] = s.warp_ops;
    d["switches"] = s.switches;
    d["checked_bytes"] = s.checked_bytes;
    return d;
  });
#endif
  m.def("cuda_runtime_available", &cuda_runtime_available);

  m.def("assignment_workspace_bytes", [](int32_t device, int64_t B, int64_t n, int64_t mm) {
    return ff::assignment_workspace_bytes(static_cast<ff::DeviceType>(device), B, n, mm);
  });
  m.def(
      "linear_assignment",
      [](const py::tuple& cost, const py::tuple& out, bool maximize, uintptr_t workspace,
         int64_t workspace_bytes, uintptr_t stream) {
        ff::AssignmentParams p;
        p.cost = to_view(cost);
        p.col_for_row = to_view(out);
        p.maximize = maximize;
        p.workspace = reinterpret_cast<void*>(workspace);
        p.workspace_bytes = workspace_bytes;
        p.stream = reinterpret_cast<void*>(stream);
        py::gil_scoped_release release;
        ff::assignment(p);
      },
      py::arg("cost"), py::arg("out"), py::arg("maximize"), py::arg("workspace") = 0,
      py::arg("workspace_bytes") = 0, py::arg("stream") = 0);

  m.def("interpolant_sample", [](const py::tuple& inputs, const py::tuple& xt, const py::object& eps_out,
                                 uintptr_t stream) {
    ff::InterpolantSampleParams p;
    p.in = to_interpolant_inputs(inputs);
    p.xt = to_view(xt);
    p.eps_out = to_view_or_empty(eps_out);
    p.stream = reinterpret_cast<void*>(stream);
    py::gil_scoped_release release;
    ff::interpolant_sample(p);
  });
  m.def("interpolant_loss_forward", [](const py::tuple& inputs, const py::tuple& v, const py::object& weight,
                                       const py::tuple& per_sample, uintptr_t stream) {
    ff::InterpolantLossParams p;
    p.in = to_interpolant_inputs(inputs);
    p.v = to_view(v);
    p.weight = to_view_or_empty(weight);
    p.per_sample = to_view(per_sample);
    p.stream = reinterpret_cast<void*>(stream);
    py::gil_scoped_release release;
    ff::interpolant_loss_forward(p);
  });
  m.def("interpolant_loss_backward", [](const py::tuple& inputs, const py::tuple& v, const py::object& weight,
                                        const py::tuple& grad, const py::tuple& grad_v, uintptr_t stream) {
    ff::InterpolantLossParams p;
    p.in = to_interpolant_inputs(inputs);
    p.v = to_view(v);
    p.weight = to_view_or_empty(weight);
    p.grad = to_view(grad);
    p.grad_v = to_view(grad_v);
    p.stream = reinterpret_cast<void*>(stream);
    py::gil_scoped_release release;
    ff::interpolant_loss_backward(p);
  });

  // Sinkhorn: `problem` = (geometry, cost|None, x|None, y|None, log_a, log_b).
  m.def("sinkhorn_workspace_bytes", [](int32_t device, int64_t B, int64_t n, int64_t mm) {
    return ff::sinkhorn_workspace_bytes(static_cast<ff::DeviceType>(device), B, n, mm);
  });
  m.def(
      "sinkhorn_solve",
      [](const py::tuple& problem, const py::tuple& f, const py::tuple& g, const py::tuple& n_iter,
         const py::tuple& marginal_error, double eps, double eps_start, double eps_decay, double reg_m,
         int64_t max_iter, int64_t check_every, double tol, uintptr_t workspace, int64_t workspace_bytes,
         uintptr_t stream) {
        ff::SinkhornParams p;
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
        p.workspace = reinterpret_cast<void*>(workspace);
        p.workspace_bytes = workspace_bytes;
        p.stream = reinterpret_cast<void*>(stream);
        py::gil_scoped_release release;
        ff::sinkhorn_solve(p);
      });
  m.def(
      "sinkhorn_plan",
      [](const py::tuple& problem, const py::tuple& f, const py::tuple& g, double eps, const py::object& plan,
         const py::object& row_mass, const py::object& col_mass, const py::object& transport_cost,
         const py::object& plan_y, const py::object& plan_t_x, uintptr_t stream) {
        ff::SinkhornPlanParams p;
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
        p.stream = reinterpret_cast<void*>(stream);
        py::gil_scoped_release release;
        ff::sinkhorn_plan(p);
      });
  m.def("sinkhorn_sample", [](const py::tuple& problem, const py::tuple& g, double eps, uint64_t seed, uint64_t offset,
                              const py::tuple& cols, uintptr_t stream) {
    ff::SinkhornSampleParams p;
    p.problem = to_problem(problem);
    p.g = to_view(g);
    p.eps = eps;
    p.seed = seed;
    p.offset = offset;
    p.cols = to_view(cols);
    p.stream = reinterpret_cast<void*>(stream);
    py::gil_scoped_release release;
    ff::sinkhorn_sample(p);
  });
}
