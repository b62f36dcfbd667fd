// Deliberately broken kernels (and one correct one) that prove the emulation's checks fire:
// tests run each through run_selftest and assert the report. Compiled like the product's .cu
// files (same headers, same instrumentation), never part of the product.
#include <stdexcept>
#include <string>

#include "cuda_runtime.h"
#include "emu_controls.h"
#include "flowfast/common.h"

namespace ff_emu {
namespace {

// Correct: a block reduction through shared memory and warp shuffles. out[0] = sum of 0..n-1.
__global__ void block_sum(const int* in, int n, long long* out) {
  __shared__ long long partial[32];
  long long acc = 0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) acc += in[i];
  for (int offset = 16; offset > 0; offset >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, offset);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = acc;
  __syncthreads();
  if (threadIdx.x < 32) {
    long long v = threadIdx.x < blockDim.x / 32 ? partial[threadIdx.x] : 0;
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
    if (threadIdx.x == 0) out[0] = v;
  }
}

// Bug: neighbours' shared values are read with no __syncthreads after they are written.
__global__ void missing_syncthreads(float* out) {
  __shared__ float values[128];
  values[threadIdx.x] = static_cast<float>(threadIdx.x);
  out[threadIdx.x] = values[(threadIdx.x + 1) % blockDim.x];
}

// Bug: one element past the end of a shared array.
__global__ void shared_out_of_bounds(float* out) {
  __shared__ float values[32];
  values[threadIdx.x + 1] = 1.0f;
  __syncthreads();
  out[threadIdx.x] = values[threadIdx.x];
}

// Bug: half the warp has returned when the other half shuffles with the full mask.
__global__ void shuffle_with_exited_lanes(int* out) {
  if (threadIdx.x >= 16) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, static_cast<int>(threadIdx.x), 1);
}

// Bug: a full-mask shuffle whose partner lanes wait at a block barrier instead.
__global__ void divergent_barrier(int* out) {
  if (threadIdx.x < 16) {
    out[threadIdx.x] = __shfl_sync(0xffffffffu, 1, 0);
  } else {
    __syncthreads();
  }
}

// Bug: every block writes the same global word (write-write race between blocks).
__global__ void cross_block_write(int* out) {
  if (threadIdx.x == 0) out[0] = static_cast<int>(blockIdx.x);
}

// Bug: a plain read of a counter other threads update atomically in the same phase.
__global__ void plain_read_of_atomic(int* counter, int* out) {
  atomicAdd(counter, 1);
  out[threadIdx.x] = *counter;
}

// Correct: atomics, __ldcg and a flag raised by atomicExch never race with each other.
__global__ void atomics_only(int* counter, int* flag, int* out) {
  atomicAdd(counter, 1);
  if (threadIdx.x == 5) atomicExch(flag, 1);
  out[blockIdx.x * blockDim.x + threadIdx.x] = __ldcg(flag) + 0 * __ldcg(counter);
}

}  // namespace

void run_selftest(const std::string& name) {
  int ints[1024] = {};
  float floats[1024] = {};
  long long sum = -1;
  if (name == "block_sum") {
    for (int i = 0; i < 1000; ++i) ints[i] = i;
    FF_LAUNCH(1, 256, 0, nullptr, block_sum)(ints, 1000, &sum);
    FF_CHECK(sum == 999 * 1000 / 2, "block_sum computed ", sum, ", expected ", 999 * 1000 / 2);
  } else if (name == "missing_syncthreads") {
    FF_LAUNCH(1, 128, 0, nullptr, missing_syncthreads)(floats);
  } else if (name == "shared_out_of_bounds") {
    FF_LAUNCH(1, 32, 0, nullptr, shared_out_of_bounds)(floats);
  } else if (name == "shuffle_with_exited_lanes") {
    FF_LAUNCH(1, 32, 0, nullptr, shuffle_with_exited_lanes)(ints);
  } else if (name == "divergent_barrier") {
    FF_LAUNCH(1, 32, 0, nullptr, divergent_barrier)(ints);
  } else if (name == "cross_block_write") {
    FF_LAUNCH(4, 32, 0, nullptr, cross_block_write)(ints);
  } else if (name == "plain_read_of_atomic") {
    FF_LAUNCH(1, 64, 0, nullptr, plain_read_of_atomic)(ints, ints + 1);
  } else if (name == "atomics_only") {
    FF_LAUNCH(2, 64, 0, nullptr, atomics_only)(ints, ints + 1, ints + 2);
    FF_CHECK(ints[0] == 128, "atomics_only counted ", ints[0], ", expected 128");
  } else {
    FF_CHECK(false, "unknown emulation self-test '", name, "'");
  }
}

}  // namespace ff_emu
