// CUDA helpers shared by every family's .cu file: error checks, the device guard, and warp/block
// reductions. Host-side code here never allocates device memory (the caller's framework does).
#pragma once

#include <cuda_runtime.h>

#include "flowfast/common.h"

// FF_LAUNCH(grid, block, shared_bytes, stream, kernel)(args...): the one launch syntax of every
// .cu file. The SIMT emulation (csrc/emu/include/cuda_runtime.h) defines it to run the same
// kernel on CPU fibers; here it is the triple-chevron launch.
#if !defined(FLOWFAST_CUDA_EMULATION)
#define FF_LAUNCH(GRID, BLOCK, SMEM, STREAM, ...) __VA_ARGS__<<<GRID, BLOCK, SMEM, STREAM>>>
#endif

#define FF_CUDA_CHECK(expr)                                                             \
  do {                                                                                  \
    cudaError_t ff_err_ = (expr);                                                       \
    FF_CHECK(ff_err_ == cudaSuccess, "CUDA error: ", cudaGetErrorString(ff_err_), " (", \
             #expr, ")");                                                               \
  } while (0)

namespace ff {
namespace cuda {

constexpr int kWarp = 32;

// Makes `device` current for the scope of one kernel call and restores the caller's device.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    FF_CUDA_CHECK(cudaGetDevice(&previous_));
    if (previous_ != device) FF_CUDA_CHECK(cudaSetDevice(device));
  }
  ~DeviceGuard() { cudaSetDevice(previous_); }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

inline cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }

// The sum of `value` over a block of kThreads threads (a multiple of kWarp), valid in thread 0;
// `partial` is shared memory of kThreads / kWarp doubles, used once per call. A fixed tree, so the
// sum is the same on every run.
template <int kThreads>
__device__ inline double block_sum(double value, double* partial) {
  for (int offset = kWarp / 2; offset > 0; offset >>= 1) value += __shfl_xor_sync(0xffffffffu, value, offset);
  if (threadIdx.x % kWarp == 0) partial[threadIdx.x / kWarp] = value;
  __syncthreads();
  double sum = 0.0;
  if (threadIdx.x == 0)
    for (int w = 0; w < kThreads / kWarp; ++w) sum += partial[w];
  return sum;
}

inline int64_t align_up(int64_t bytes, int64_t alignment = 256) {
  return (bytes + alignment - 1) / alignment * alignment;
}

}  // namespace cuda
}  // namespace ff
