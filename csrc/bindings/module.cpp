// THE pybind11 module, flowfast._C: what the build can do, plus one bind_<family>() per kernel
// family (csrc/bindings/<family>.cpp). Adding a family = its binding file + one name in
// FLOWFAST_FAMILIES below. Long-running kernels release the GIL (views.h: call_released).
#include <string>

#include "bindings/views.h"

#if defined(FLOWFAST_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif
#if defined(FLOWFAST_CUDA_EMULATION)  // defined by the emulation's cuda_runtime_api.h
#include "emu_controls.h"
#endif
#if defined(FLOWFAST_WITH_OPENMP)
#include <omp.h>
#include <pthread.h>
#endif

#define FLOWFAST_FAMILIES(X) X(assignment) X(sinkhorn) X(interpolant) X(simplex) X(dfm)

namespace ff::bind {

#define FF_DECLARE_BINDING(family) void bind_##family(py::module_& m);
FLOWFAST_FAMILIES(FF_DECLARE_BINDING)
#undef FF_DECLARE_BINDING

namespace {

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

// A forked child inherits the parent's OpenMP state but not its worker threads: with GNU OpenMP
// its next parallel region waits for them forever (DataLoader workers, multiprocessing pools).
// The child runs flowfast's kernels on one thread instead (what torch does with its own pool).
void run_single_threaded_after_fork() {
#if defined(FLOWFAST_WITH_OPENMP)
  static const bool registered = [] {
    pthread_atfork(nullptr, nullptr, [] { omp_set_num_threads(1); });
    return true;
  }();
  (void)registered;
#endif
}

#if defined(FLOWFAST_CUDA_EMULATION)
void bind_emulation_controls(py::module_& m) {
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
}
#endif

}  // namespace
}  // namespace ff::bind

// The product module is flowfast._C; the test-only SIMT emulation builds (cmake/emulation.cmake)
// compile this same file as _C_emu_race / _C_emu_asan.
#ifndef FLOWFAST_MODULE_NAME
#define FLOWFAST_MODULE_NAME _C
#endif

PYBIND11_MODULE(FLOWFAST_MODULE_NAME, m) {
  namespace py = pybind11;
  m.doc() = "flowfast kernel core (torch-free; see flowfast/ops for the torch layer)";
  py::register_exception<ff::Error>(m, "KernelError", PyExc_ValueError);
  m.def("build_info", &ff::bind::build_info);
  m.def("cuda_runtime_available", &ff::bind::cuda_runtime_available);
  ff::bind::run_single_threaded_after_fork();
#if defined(FLOWFAST_CUDA_EMULATION)
  ff::bind::bind_emulation_controls(m);
#endif
#define FF_CALL_BINDING(family) ff::bind::bind_##family(m);
  FLOWFAST_FAMILIES(FF_CALL_BINDING)
#undef FF_CALL_BINDING
}
