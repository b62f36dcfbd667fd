// flowfast kernel core: the framework-agnostic vocabulary shared by every kernel family.
// No torch types here: kernels see plain pointers, sizes, strides and (for CUDA) a stream
// handle owned by the caller. Python (flowfast/_arrays.py) builds TensorViews from tensors.
#pragma once

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>

#if defined(__CUDACC__)
#define FF_HD __host__ __device__ __forceinline__
#else
#define FF_HD inline
#endif

namespace ff {

// Codes are part of the Python<->C++ contract (flowfast/_arrays.py mirrors them).
enum class DType : int32_t { Float32 = 0, Float64 = 1, Int64 = 2, Int32 = 3, Float16 = 4, BFloat16 = 5 };
enum class DeviceType : int32_t { CPU = 0, CUDA = 1 };

constexpr int kMaxDims = 4;

// A strided view of memory someone else owns. Strides are in elements, not bytes.
struct TensorView {
  void* data = nullptr;
  DType dtype = DType::Float32;
  DeviceType device = DeviceType::CPU;
  int32_t device_index = 0;
  int32_t ndim = 0;
  int64_t shape[kMaxDims] = {0, 0, 0, 0};
  int64_t strides[kMaxDims] = {0, 0, 0, 0};

  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= shape[i];
    return n;
  }
};

// Thrown by FF_CHECK; the binding maps it to Python's ValueError.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

/// Thrown by check_interrupt() when the caller asked to stop (Ctrl-C); the binding turns it into
/// the KeyboardInterrupt Python already raised.
class Interrupted : public Error {
 public:
  Interrupted() : Error("interrupted") {}
};

/// Set by the binding's watcher (bindings/views.h, call_interruptible) on a signal; one flag for
/// the process, so an interrupt stops every flowfast call running at that moment. Defined out of
/// line (csrc/dispatch/interrupt.cpp) so that kernel files compiled for the emulation's race
/// detector see a plain call, not an instrumented atomic.
bool interrupt_requested();
void set_interrupt_requested(bool value);

/// Long host-side loops (iterations, augmenting rows) call this between units of work. Never
/// inside an OpenMP region without catching (exceptions must not cross it).
inline void check_interrupt() {
  if (interrupt_requested()) throw Interrupted();
}

namespace detail {
inline void append(std::ostringstream&) {}
template <typename T, typename... Rest>
void append(std::ostringstream& os, const T& first, const Rest&... rest) {
  os << first;
  append(os, rest...);
}
template <typename... Args>
[[noreturn]] void fail(const char* cond, const char* file, int line, const Args&... args) {
  std::ostringstream os;
  append(os, args...);
  os << " [check '" << cond << "' failed at " << file << ":" << line << "]";
  throw Error(os.str());
}
}  // namespace detail

#define FF_CHECK(cond, ...)                                              \
  do {                                                                   \
    if (!(cond)) ::ff::detail::fail(#cond, __FILE__, __LINE__, __VA_ARGS__); \
  } while (0)

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::Float32: return "float32";
    case DType::Float64: return "float64";
    case DType::Int64: return "int64";
    case DType::Int32: return "int32";
    case DType::Float16: return "float16";
    case DType::BFloat16: return "bfloat16";
  }
  return "unknown";
}

}  // namespace ff

// FF_DISPATCH_FLOATING(dtype, scalar_t, [&] { kernel<scalar_t>(...); })
// Instantiates the body for float and double; any other dtype is a clear error.
#define FF_DISPATCH_FLOATING(DTYPE, SCALAR, NAME, ...)                              \
  [&] {                                                                             \
    switch (DTYPE) {                                                                \
      case ::ff::DType::Float32: { using SCALAR = float; return __VA_ARGS__(); }    \
      case ::ff::DType::Float64: { using SCALAR = double; return __VA_ARGS__(); }   \
      default:                                                                      \
        FF_CHECK(false, NAME, ": expected float32 or float64, got ", ::ff::dtype_name(DTYPE)); \
    }                                                                               \
  }()

// FF_DISPATCH_FLOATING_AND_HALF(dtype, scalar_t, Half16, BFloat16, name, body): float, double and
// the two 16-bit types, which each backend names itself (ff::Half / ff::BFloat16 on the CPU,
// __half / __nv_bfloat16 in CUDA files). For bandwidth-bound kernels that compute in double.
#define FF_DISPATCH_FLOATING_AND_HALF(DTYPE, SCALAR, HALF_T, BF16_T, NAME, ...)        \
  [&] {                                                                             \
    switch (DTYPE) {                                                                \
      case ::ff::DType::Float32: { using SCALAR = float; return __VA_ARGS__(); }    \
      case ::ff::DType::Float64: { using SCALAR = double; return __VA_ARGS__(); }   \
      case ::ff::DType::Float16: { using SCALAR = HALF_T; return __VA_ARGS__(); }   \
      case ::ff::DType::BFloat16: { using SCALAR = BF16_T; return __VA_ARGS__(); }  \
      default:                                                                      \
        FF_CHECK(false, NAME, ": expected a floating dtype, got ", ::ff::dtype_name(DTYPE)); \
    }                                                                               \
  }()
