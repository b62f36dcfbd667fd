// flowfast SIMT emulation: the part of the CUDA programming model the kernels in csrc/cuda use,
// for the HOST compiler, so the same .cu sources run on a CPU in tests (never in the wheel).
// Each block's threads are cooperative fibers (csrc/emu/scheduler.cpp); barriers and warp
// intrinsics are real rendezvous with data exchange; atomics, __ldcg and volatile accesses are
// reported to the race detector (csrc/emu/race_detector.cpp) as atomic, plain accesses reach it
// through the compiler's -fsanitize=thread instrumentation in the race build.
#pragma once

#include <math.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

#define FLOWFAST_CUDA_EMULATION 1
#define CUDART_VERSION 13000

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

// Shared memory is one static per declaration (blocks run one at a time), preceded by a 64-byte
// guard object: GNU ld lays a function's statics out in reverse order, so each array is followed
// by its guard and an access past its end lands in a guard, which both sanitizer builds report.
// Hence one array per __shared__ declaration (a second declarator would get no guard of its own).
#define FF_EMU_CAT2(a, b) a##b
#define FF_EMU_CAT(a, b) FF_EMU_CAT2(a, b)
#define __shared__                                                                            \
  static __attribute__((used, aligned(16))) unsigned char FF_EMU_CAT(ff_emu_shared_guard_, \
                                                                     __COUNTER__)[64];      \
  static __attribute__((aligned(16)))

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};

namespace ff_emu {

// ---- execution state of the running fiber (out of line: never an instrumented access) ----
uint3 thread_idx();
uint3 block_idx();
dim3 block_dim();
dim3 grid_dim();

void sync_threads();
enum class WarpOp : int { Sync = 0, Index = 1, Xor = 2, Down = 3, Up = 4, Ballot = 5 };
uint64_t warp_exchange(WarpOp op, unsigned mask, uint64_t bits, int param, int width);

// ---- atomics and relaxed loads (reported to the race detector as atomic accesses) ----
void note_atomic(const volatile void* addr, size_t size, bool write);
// Their own loads and stores must not reach the detector as plain accesses.
#define FF_EMU_UNINSTRUMENTED __attribute__((noinline, no_sanitize_thread))

template <typename T>
FF_EMU_UNINSTRUMENTED T atomic_rmw(T* addr, T operand, int kind) {
  static_assert(std::is_trivially_copyable<T>::value, "atomic on a non-trivial type");
  note_atomic(addr, sizeof(T), true);
  const T old = *addr;
  T next = old;
  switch (kind) {
    case 0: next = old + operand; break;                  // add
    case 1: next = old < operand ? operand : old; break;  // max
    case 2: next = operand < old ? operand : old; break;  // min
    case 3: next = operand; break;                        // exchange
    default: break;
  }
  *addr = next;
  return old;
}

template <typename T>
FF_EMU_UNINSTRUMENTED T relaxed_load(const T* addr) {
  note_atomic(addr, sizeof(T), false);
  return *addr;
}

template <typename T>
uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "warp intrinsics move <= 8-byte values");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  return bits;
}
template <typename T>
T from_bits(uint64_t bits) {
  T v;
  std::memcpy(&v, &bits, sizeof(T));
  return v;
}

// ---- launches: FF_LAUNCH(grid, block, smem, stream, kernel)(args...) ----
struct LaunchConfig {
  dim3 grid, block;
  size_t shared_bytes;
  void* stream;
  const char* kernel_name;
};

struct KernelBody {
  virtual ~KernelBody() = default;
  virtual void run() = 0;  // one thread's execution of the kernel
  // Pointer arguments, for naming global addresses in race reports.
  const void* pointer_args[16] = {};
  int n_pointer_args = 0;
};

// Runs every block (in a seed-shuffled order) and every thread of the launch; throws ff::Error
// after the launch on a race, an out-of-bounds guard hit, a deadlock or a divergent warp op.
void run_launch(const LaunchConfig& config, KernelBody& body);

template <typename Kernel, typename... Args>
struct BoundKernel final : KernelBody {
  Kernel kernel;
  std::tuple<Args...> args;
  BoundKernel(Kernel k, Args... a) : kernel(k), args(std::move(a)...) {
    std::apply([this](const auto&... x) { (note_pointer(x), ...); }, args);
  }
  template <typename A>
  void note_pointer(const A& a) {
    if constexpr (std::is_pointer<A>::value) {
      if (n_pointer_args < 16) pointer_args[n_pointer_args++] = static_cast<const void*>(a);
    }
  }
  void run() override {
    std::tuple<Args...> copy = args;  // each thread gets its own by-value parameters
    std::apply(kernel, copy);
  }
};

template <typename Kernel>
struct Launcher {
  LaunchConfig config;
  Kernel kernel;
  template <typename... Args>
  void operator()(Args&&... args) const {
    BoundKernel<Kernel, std::decay_t<Args>...> body(kernel, std::forward<Args>(args)...);
    run_launch(config, body);
  }
};

template <typename Kernel>
Launcher<Kernel> make_launcher(dim3 grid, dim3 block, size_t smem, void* stream, const char* name, Kernel k) {
  return Launcher<Kernel>{LaunchConfig{grid, block, smem, stream, name}, k};
}

}  // namespace ff_emu

#define FF_LAUNCH(GRID, BLOCK, SMEM, STREAM, ...) \
  ::ff_emu::make_launcher(dim3(GRID), dim3(BLOCK), (SMEM), (void*)(STREAM), #__VA_ARGS__, &__VA_ARGS__)

#define threadIdx (::ff_emu::thread_idx())
#define blockIdx (::ff_emu::block_idx())
#define blockDim (::ff_emu::block_dim())
#define gridDim (::ff_emu::grid_dim())
constexpr int warpSize = 32;

// CUDA's integer min/max overloads of device code (the float ones come from math.h).
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a < b ? b : a; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a < b ? b : a; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a < b ? b : a; }
inline long min(long a, long b) { return a < b ? a : b; }
inline long max(long a, long b) { return a < b ? b : a; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a < b ? b : a; }

inline void __syncthreads() { ::ff_emu::sync_threads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { ::ff_emu::warp_exchange(::ff_emu::WarpOp::Sync, mask, 0, 0, 32); }

template <typename T>
T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
  return ::ff_emu::from_bits<T>(
      ::ff_emu::warp_exchange(::ff_emu::WarpOp::Index, mask, ::ff_emu::to_bits(v), src_lane, width));
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  return ::ff_emu::from_bits<T>(
      ::ff_emu::warp_exchange(::ff_emu::WarpOp::Xor, mask, ::ff_emu::to_bits(v), lane_mask, width));
}
template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return ::ff_emu::from_bits<T>(
      ::ff_emu::warp_exchange(::ff_emu::WarpOp::Down, mask, ::ff_emu::to_bits(v), static_cast<int>(delta), width));
}
template <typename T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return ::ff_emu::from_bits<T>(
      ::ff_emu::warp_exchange(::ff_emu::WarpOp::Up, mask, ::ff_emu::to_bits(v), static_cast<int>(delta), width));
}
inline unsigned __ballot_sync(unsigned mask, int predicate) {
  return static_cast<unsigned>(::ff_emu::warp_exchange(::ff_emu::WarpOp::Ballot, mask, predicate != 0, 0, 32));
}
inline int __any_sync(unsigned mask, int predicate) { return __ballot_sync(mask, predicate) != 0; }
inline int __all_sync(unsigned mask, int predicate) { return __ballot_sync(mask, predicate) == mask; }

template <typename T>
T atomicAdd(T* addr, T v) { return ::ff_emu::atomic_rmw(addr, v, 0); }
template <typename T>
T atomicMax(T* addr, T v) { return ::ff_emu::atomic_rmw(addr, v, 1); }
template <typename T>
T atomicMin(T* addr, T v) { return ::ff_emu::atomic_rmw(addr, v, 2); }
template <typename T>
T atomicExch(T* addr, T v) { return ::ff_emu::atomic_rmw(addr, v, 3); }
template <typename T>
FF_EMU_UNINSTRUMENTED T atomicCAS(T* addr, T compare, T v) {
  ::ff_emu::note_atomic(addr, sizeof(T), true);
  const T old = *addr;
  if (old == compare) *addr = v;
  return old;
}
template <typename T>
T __ldcg(const T* addr) { return ::ff_emu::relaxed_load(addr); }

inline unsigned __float_as_uint(float x) { return ::ff_emu::from_bits<unsigned>(::ff_emu::to_bits(x)); }
inline float __uint_as_float(unsigned x) { return ::ff_emu::from_bits<float>(::ff_emu::to_bits(x)); }
inline int __float_as_int(float x) { return ::ff_emu::from_bits<int>(::ff_emu::to_bits(x)); }
inline float __int_as_float(int x) { return ::ff_emu::from_bits<float>(::ff_emu::to_bits(x)); }
inline long long __double_as_longlong(double x) { return ::ff_emu::from_bits<long long>(::ff_emu::to_bits(x)); }
inline double __longlong_as_double(long long x) { return ::ff_emu::from_bits<double>(::ff_emu::to_bits(x)); }
// Round-to-nearest IEEE ops that nvcc never fuses into an FMA; the host compiler (no -mfma, no
// contraction across these calls) rounds each one too.
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }

// ---- host runtime API (device pointers are host pointers; streams run synchronously) ----
enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorInvalidDevice = 101 };
typedef cudaError_t cudaError;
enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4
};
struct CUstream_st;
typedef CUstream_st* cudaStream_t;

cudaError_t cudaGetDeviceCount(int* count);
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetLastError();
const char* cudaGetErrorString(cudaError_t error);
cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t stream = nullptr);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream = nullptr);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
