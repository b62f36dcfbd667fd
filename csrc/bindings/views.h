// What every family's binding file shares: array descriptors -> ff::TensorView, raw handles ->
// pointers. Arrays arrive as the plain tuples flowfast/_arrays.py builds:
// (data_ptr, dtype_code, device_type, device_index, shape, strides); streams and workspaces as
// integers.
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <cstdint>
#include <exception>
#include <future>
#include <thread>
#include <vector>

#if defined(FLOWFAST_WITH_OPENMP)
#include <omp.h>
#endif

#include "flowfast/common.h"

namespace ff::bind {

namespace py = pybind11;

/// One integer field of a descriptor (CPython's API directly: this runs for every array of every
/// kernel call, where pybind11's casters and a std::vector per shape cost microseconds).
inline long long descriptor_int(PyObject* field) {
  const long long value = PyLong_AsLongLong(field);
  if (value == -1 && PyErr_Occurred()) throw py::error_already_set();
  return value;
}

/// The shape or strides field: a tuple (torch.Size is one) of at most kMaxDims integers.
inline int32_t descriptor_dims(PyObject* field, int64_t* out) {
  FF_CHECK(PyTuple_Check(field), "internal: array descriptor shape/strides must be tuples");
  const Py_ssize_t n = PyTuple_GET_SIZE(field);
  FF_CHECK(n <= static_cast<Py_ssize_t>(kMaxDims), "internal: array descriptor has too many dims");
  for (Py_ssize_t i = 0; i < n; ++i) out[i] = descriptor_int(PyTuple_GET_ITEM(field, i));
  return static_cast<int32_t>(n);
}

inline TensorView to_view(const py::tuple& t) {
  PyObject* fields = t.ptr();
  FF_CHECK(PyTuple_GET_SIZE(fields) == 6, "internal: array descriptor must have 6 fields");
  TensorView v;
  const unsigned long long data = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(fields, 0));
  if (data == static_cast<unsigned long long>(-1) && PyErr_Occurred()) throw py::error_already_set();
  v.data = reinterpret_cast<void*>(static_cast<uintptr_t>(data));
  v.dtype = static_cast<DType>(descriptor_int(PyTuple_GET_ITEM(fields, 1)));
  v.device = static_cast<DeviceType>(descriptor_int(PyTuple_GET_ITEM(fields, 2)));
  v.device_index = static_cast<int32_t>(descriptor_int(PyTuple_GET_ITEM(fields, 3)));
  v.ndim = descriptor_dims(PyTuple_GET_ITEM(fields, 4), v.shape);
  FF_CHECK(descriptor_dims(PyTuple_GET_ITEM(fields, 5), v.strides) == v.ndim,
           "internal: array descriptor has inconsistent dims");
  return v;
}

/// None -> an empty view (kernels treat a null data pointer as "not given / not requested").
inline TensorView to_view_or_empty(const py::object& o) {
  if (o.is_none()) return TensorView{};
  return to_view(o.cast<py::tuple>());
}

inline void* to_ptr(uintptr_t handle) { return reinterpret_cast<void*>(handle); }

/// Runs a family's dispatch function with the GIL released (kernels never touch Python objects).
template <typename Params>
void call_released(void (*dispatch)(const Params&), const Params& p) {
  py::gil_scoped_release release;
  dispatch(p);
}

/// For calls that may run for seconds: the kernel runs on a worker thread while this thread waits
/// without the GIL and, every 20 ms, lets Python run its signal handlers. On Ctrl-C it raises
/// ff::set_interrupt_requested(true), which the kernels' loops poll (check_interrupt), waits for the worker to
/// stop, and raises the KeyboardInterrupt. Starting a thread costs tens of microseconds, so
/// bindings use this above a work threshold only.
template <typename Params>
void call_interruptible(void (*dispatch)(const Params&), const Params& p) {
  set_interrupt_requested(false);
#if defined(FLOWFAST_WITH_OPENMP)
  // A new thread starts from OpenMP's defaults: give it the caller's thread count (what
  // torch.set_num_threads and omp_set_num_threads set), as a call on the caller's thread gets.
  const int threads = omp_get_max_threads();
  std::packaged_task<void()> task([&] {
    omp_set_num_threads(threads);
    dispatch(p);
  });
#else
  std::packaged_task<void()> task([&] { dispatch(p); });
#endif
  std::future<void> done = task.get_future();
  std::thread worker(std::move(task));
  bool interrupted = false;
  for (;;) {
    bool ready;
    {
      py::gil_scoped_release release;
      ready = done.wait_for(std::chrono::milliseconds(20)) == std::future_status::ready;
    }
    if (ready) break;
    if (!interrupted && PyErr_CheckSignals() != 0) {
      interrupted = true;
      set_interrupt_requested(true);
    }
  }
  worker.join();
  set_interrupt_requested(false);
  if (interrupted) throw py::error_already_set();  // the signal handler's exception (KeyboardInterrupt)
  try {
    done.get();
  } catch (const Interrupted&) {
    // Another call's interrupt stopped this one: it is a KeyboardInterrupt here too.
    PyErr_SetNone(PyExc_KeyboardInterrupt);
    throw py::error_already_set();
  }
}

/// call_interruptible when the call is big enough to be worth a thread, call_released otherwise.
template <typename Params>
void call_long(void (*dispatch)(const Params&), const Params& p, double work) {
  constexpr double kThreadWorthIt = 1 << 20;  // about a millisecond of kernel time
  if (work >= kThreadWorthIt) {
    call_interruptible(dispatch, p);
  } else {
    call_released(dispatch, p);
  }
}

}  // namespace ff::bind
