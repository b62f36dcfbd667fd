// CUDA twin of csrc/cpu/interpolant_cpu.cpp: fused CFM path sampling (grid-stride, one thread per
// pair of elements, which share one Box-Muller draw), loss forward (one block per sample row, block
// reduction; deterministic; optionally the mean loss's gradient in the same pass) and loss backward (grid-stride over pairs). Per-element math from flowfast/interpolant_math.h; the noise is read or
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

// Noise of elements 2 pair and 2 pair + 1 (the second only if it exists): a drawn Box-Muller pair
// yields both, so each thread draws once for two elements instead of twice for one.
template <typename T>
__device__ __forceinline__ void pair_noise(const InterpolantRows<T>& in, int64_t pair, bool has_second, double* e0,
                                           double* e1) {
  if (in.noise) {
    *e0 = static_cast<double>(in.noise[2 * pair]);
    *e1 = has_second ? static_cast<double>(in.noise[2 * pair + 1]) : 0.0;
  } else {
    typename InterpolantRows<T>::NoiseT z0, z1;
    standard_normal_pair(in.seed, in.offset, static_cast<uint64_t>(pair), &z0, &z1);
    *e0 = static_cast<double>(z0);
    *e1 = static_cast<double>(z1);
  }
}

// One thread per element pair (2p, 2p + 1). Rows of odd length end mid-pair, so the second element
// may belong to row b + 1.
struct PairRows {
  int64_t k, b;          // first element, its row
  bool has_second;       // 2p + 1 < B * D
  bool second_next_row;  // 2p + 1 starts row b + 1
};

__device__ __forceinline__ PairRows pair_rows(int64_t pair, int64_t B, int64_t D) {
  const int64_t k = 2 * pair, b = k / D;
  const bool has_second = k + 1 < B * D;
  return PairRows{k, b, has_second, has_second && k + 1 == (b + 1) * D};
}

template <typename T>
__global__ void sample_kernel(InterpolantRows<T> in, T* xt, T* noise_out) {
  const int64_t pairs = (in.B * in.D + 1) / 2;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; p < pairs;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const PairRows r = pair_rows(p, in.B, in.D);
    const PathCoeffs c0 = in.coeffs(r.b);
    const PathCoeffs c1 = r.second_next_row ? in.coeffs(r.b + 1) : c0;
    double e0 = 0.0, e1 = 0.0;  // sigma = 0: nothing to draw
    if (noise_out || c0.c != 0.0 || (r.has_second && c1.c != 0.0)) pair_noise(in, p, r.has_second, &e0, &e1);
    xt[r.k] = to_storage<T>(in.interpolate(c0, r.k, e0));
    if (noise_out) noise_out[r.k] = to_storage<T>(e0);
    if (r.has_second) {
      xt[r.k + 1] = to_storage<T>(in.interpolate(c1, r.k + 1, e1));
      if (noise_out) noise_out[r.k + 1] = to_storage<T>(e1);
    }
  }
}

// grad_v (optional): 2 grad_scale weight[b] (v - u_t), written by the row's own block.
template <typename T>
__global__ void loss_forward_kernel(InterpolantRows<T> in, const T* v, const T* weight, T* per_sample, T* grad_v,
                                    double grad_scale) {
  __shared__ double partial[kThreads / cuda::kWarp];
  const int64_t b = blockIdx.x;
  const PathCoeffs c = in.coeffs(b);
  const int64_t row_start = b * in.D, row_end = row_start + in.D, total = in.B * in.D;
  const double scale = 2.0 * grad_scale * (weight ? static_cast<double>(weight[b]) : 1.0);
  double acc = 0.0;
  // The row's pairs; the first and last may be shared with the neighbouring rows.
  for (int64_t p = (row_start >> 1) + threadIdx.x; 2 * p < row_end; p += kThreads) {
    const int64_t k = 2 * p;
    double e0 = 0.0, e1 = 0.0;
    if (c.dc != 0.0) pair_noise(in, p, k + 1 < total, &e0, &e1);
    if (k >= row_start) {
      const double diff = static_cast<double>(v[k]) - in.target(c, k, e0);
      acc += diff * diff;
      if (grad_v) grad_v[k] = to_storage<T>(scale * diff);
    }
    if (k + 1 < row_end) {
      const double diff = static_cast<double>(v[k + 1]) - in.target(c, k + 1, e1);
      acc += diff * diff;
      if (grad_v) grad_v[k + 1] = to_storage<T>(scale * diff);
    }
  }
  const double sum = cuda::block_sum<kThreads>(acc, partial);
  if (threadIdx.x == 0) per_sample[b] = to_storage<T>((weight ? static_cast<double>(weight[b]) : 1.0) * sum);
}

// mean = sum_b per_sample[b] / numel, one block, after loss_forward_kernel on the same stream: the
// stored (rounded) per-sample values summed in double, as the CPU kernel sums them.
template <typename T>
__global__ void mean_kernel(const T* per_sample, int64_t B, double numel, T* mean) {
  __shared__ double partial[kThreads / cuda::kWarp];
  double acc = 0.0;
  for (int64_t b = threadIdx.x; b < B; b += kThreads) acc += static_cast<double>(per_sample[b]);
  const double sum = cuda::block_sum<kThreads>(acc, partial);
  if (threadIdx.x == 0) *mean = to_storage<T>(sum / numel);
}

template <typename T>
__global__ void loss_backward_kernel(InterpolantRows<T> in, const T* v, const T* weight, const T* grad, T* grad_v) {
  const int64_t pairs = (in.B * in.D + 1) / 2;
  const auto scale = [&](int64_t b) {
    return 2.0 * static_cast<double>(grad[b]) * (weight ? static_cast<double>(weight[b]) : 1.0);
  };
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; p < pairs;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const PairRows r = pair_rows(p, in.B, in.D);
    const PathCoeffs c0 = in.coeffs(r.b);
    const PathCoeffs c1 = r.second_next_row ? in.coeffs(r.b + 1) : c0;
    double e0 = 0.0, e1 = 0.0;
    if (c0.dc != 0.0 || (r.has_second && c1.dc != 0.0)) pair_noise(in, p, r.has_second, &e0, &e1);
    grad_v[r.k] = to_storage<T>(scale(r.b) * (static_cast<double>(v[r.k]) - in.target(c0, r.k, e0)));
    if (r.has_second) {
      const int64_t b1 = r.second_next_row ? r.b + 1 : r.b;
      grad_v[r.k + 1] = to_storage<T>(scale(b1) * (static_cast<double>(v[r.k + 1]) - in.target(c1, r.k + 1, e1)));
    }
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
    FF_LAUNCH(grid_for((in.B * in.D + 1) / 2), kThreads, 0, cuda::as_stream(p.stream), sample_kernel<T>)(
        in, static_cast<T*>(p.xt.data), static_cast<T*>(p.noise_out.data));
    FF_CUDA_CHECK(cudaGetLastError());
  });
}

void interpolant_loss_forward_cuda(const InterpolantLossParams& p) {
  cuda::DeviceGuard guard(p.in.x0.device_index);
  FF_CHECK(p.in.x0.shape[0] <= 2147483647LL, "interpolant: batch too large for one launch");
  FF_DISPATCH_FLOATING_AND_HALF(p.in.x0.dtype, T, __half, __nv_bfloat16, "interpolant", [&] {
    const auto in = InterpolantRows<T>::from(p.in);
    FF_LAUNCH(static_cast<unsigned>(in.B), kThreads, 0, cuda::as_stream(p.stream), loss_forward_kernel<T>)(
        in, static_cast<const T*>(p.v.data), static_cast<const T*>(p.weight.data), static_cast<T*>(p.per_sample.data),
        static_cast<T*>(p.grad_v.data), p.grad_scale);
    FF_CUDA_CHECK(cudaGetLastError());
    if (p.mean.data) {
      FF_LAUNCH(1, kThreads, 0, cuda::as_stream(p.stream), mean_kernel<T>)(
          static_cast<const T*>(p.per_sample.data), in.B, static_cast<double>(in.B * in.D), static_cast<T*>(p.mean.data));
      FF_CUDA_CHECK(cudaGetLastError());
    }
  });
}

void interpolant_loss_backward_cuda(const InterpolantLossParams& p) {
  cuda::DeviceGuard guard(p.in.x0.device_index);
  FF_DISPATCH_FLOATING_AND_HALF(p.in.x0.dtype, T, __half, __nv_bfloat16, "interpolant", [&] {
    const auto in = InterpolantRows<T>::from(p.in);
    FF_LAUNCH(grid_for((in.B * in.D + 1) / 2), kThreads, 0, cuda::as_stream(p.stream), loss_backward_kernel<T>)(
        in, static_cast<const T*>(p.v.data), static_cast<const T*>(p.weight.data), static_cast<const T*>(p.grad.data),
        static_cast<T*>(p.grad_v.data));
    FF_CUDA_CHECK(cudaGetLastError());
  });
}

}  // namespace ff
