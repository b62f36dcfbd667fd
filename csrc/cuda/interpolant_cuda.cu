// CUDA twin of csrc/cpu/interpolant_cpu.cpp: fused CFM path sampling (grid-stride, one thread per
// element), loss forward (one block per sample row, block reduction; deterministic) and loss
// backward (grid-stride). Per-element math from flowfast/interpolant_math.h; the noise is read or
// drawn by Philox with counter = b * D + d, exactly as on the CPU. float32/float64/float16/
// bfloat16 storage (__half, __nv_bfloat16); computes and accumulates in double.
// Assumes contiguous (B, D) rows and (B,) vectors.
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda_utils.cuh"
#include "flowfast/interpolant.h"

namespace ff {
namespace {

constexpr int kThreads = 256;

// Store a double in T. 16-bit types round through float, exactly as the CPU twin (flowfast/half.h)
// and torch do; __half(double) would round once from double and differ by an ulp near ties.
template <typename T>
__device__ __forceinline__ T to_storage(double x) {
  if constexpr (sizeof(T) == 2) {
    return T(static_cast<float>(x));
  } else {
    return static_cast<T>(x);
  }
}

template <typename T>
__global__ void sample_kernel(InterpolantRows<T> in, T* xt, T* eps_out) {
  const int64_t total = in.B * in.D;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < total;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const PathCoeffs c = in.coeffs(k / in.D);
    const double e = (c.c != 0.0 || eps_out) ? in.noise(k) : 0.0;  // sigma = 0: nothing to draw
    xt[k] = to_storage<T>(in.interpolate(c, k, e));
    if (eps_out) eps_out[k] = to_storage<T>(e);
  }
}

template <typename T>
__global__ void loss_forward_kernel(InterpolantRows<T> in, const T* v, const T* weight, T* per_sample) {
  __shared__ double partial[kThreads / cuda::kWarp];
  const int64_t b = blockIdx.x;
  const PathCoeffs c = in.coeffs(b);
  double acc = 0.0;
  for (int64_t d = threadIdx.x; d < in.D; d += kThreads) {
    const int64_t k = b * in.D + d;
    const double diff = static_cast<double>(v[k]) - in.target(c, k, c.dc != 0.0 ? in.noise(k) : 0.0);
    acc += diff * diff;
  }
  for (int offset = cuda::kWarp / 2; offset > 0; offset >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, offset);
  if (threadIdx.x % cuda::kWarp == 0) partial[threadIdx.x / cuda::kWarp] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0.0;
    for (int w = 0; w < kThreads / cuda::kWarp; ++w) total += partial[w];
    per_sample[b] = to_storage<T>((weight ? static_cast<double>(weight[b]) : 1.0) * total);
  }
}

template <typename T>
__global__ void loss_backward_kernel(InterpolantRows<T> in, const T* v, const T* weight, const T* grad, T* grad_v) {
  const int64_t total = in.B * in.D;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < total;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = k / in.D;
    const PathCoeffs c = in.coeffs(b);
    const double scale = 2.0 * static_cast<double>(grad[b]) * (weight ? static_cast<double>(weight[b]) : 1.0);
    grad_v[k] = to_storage<T>(scale * (static_cast<double>(v[k]) - in.target(c, k, c.dc != 0.0 ? in.noise(k) : 0.0)));
  }
}

unsigned grid_for(int64_t total) {
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < 65535 * 8 ? (blocks > 0 ? blocks : 1) : 65535 * 8);
}

}  // namespace

void interpolant_sample_cuda(const InterpolantSampleParams& p) {
  cuda::DeviceGuard guard(p.in.x0.device_index);
  FF_DISPATCH_FLOATING_AND_HALF(p.in.x0.dtype, T, __half, __nv_bfloat16, "interpolant", [&] {
    const auto in = InterpolantRows<T>::from(p.in);
    sample_kernel<T><<<grid_for(in.B * in.D), kThreads, 0, cuda::as_stream(p.stream)>>>(
        in, static_cast<T*>(p.xt.data), static_cast<T*>(p.eps_out.data));
    FF_CUDA_CHECK(cudaGetLastError());
  });
}

void interpolant_loss_forward_cuda(const InterpolantLossParams& p) {
  cuda::DeviceGuard guard(p.in.x0.device_index);
  FF_CHECK(p.in.x0.shape[0] <= 2147483647LL, "interpolant: batch too large for one launch");
  FF_DISPATCH_FLOATING_AND_HALF(p.in.x0.dtype, T, __half, __nv_bfloat16, "interpolant", [&] {
    const auto in = InterpolantRows<T>::from(p.in);
    loss_forward_kernel<T><<<static_cast<unsigned>(in.B), kThreads, 0, cuda::as_stream(p.stream)>>>(
        in, static_cast<const T*>(p.v.data), static_cast<const T*>(p.weight.data), static_cast<T*>(p.per_sample.data));
    FF_CUDA_CHECK(cudaGetLastError());
  });
}

void interpolant_loss_backward_cuda(const InterpolantLossParams& p) {
  cuda::DeviceGuard guard(p.in.x0.device_index);
  FF_DISPATCH_FLOATING_AND_HALF(p.in.x0.dtype, T, __half, __nv_bfloat16, "interpolant", [&] {
    const auto in = InterpolantRows<T>::from(p.in);
    loss_backward_kernel<T><<<grid_for(in.B * in.D), kThreads, 0, cuda::as_stream(p.stream)>>>(
        in, static_cast<const T*>(p.v.data), static_cast<const T*>(p.weight.data), static_cast<const T*>(p.grad.data),
        static_cast<T*>(p.grad_v.data));
    FF_CUDA_CHECK(cudaGetLastError());
  });
}

}  // namespace ff
