// THE pybind11 module, flowfast._C. Arrays arrive as plain tuples built by flowfast/_arrays.py:
// (data_ptr, dtype_code, device_type, device_index, shape, strides). Streams arrive as integers.
// Long-running kernels release the GIL.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

#include "flowfast/assignment.h"

#if defined(FLOWFAST_WITH_CUDA)
#include <cuda_runtime_api.h>
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

PYBIND11_MODULE(_C, m) {
  m.doc() = "flowfast kernel core (torch-free; see flowfast/ops for the torch layer)";
  py::register_exception<ff::Error>(m, "KernelError", PyExc_ValueError);

  m.def("build_info", &build_info);
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
}
