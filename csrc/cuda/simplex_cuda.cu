// CUDA twin of csrc/cpu/simplex_cpu.cpp: the flow-map step and the ECLD/CSD distillation loss.
// A group of LANES threads owns one row (position): 4 lanes for V <= 64, a warp for V <= 4096,
// the whole block above (LLM vocabularies), so short rows do not leave a block idle and long
// rows are not walked by one warp. Each pass is a strided sweep of the row followed by a group
// reduction (xor shuffles inside a warp, then shared memory across warps); the same reduction
// order on every lane, so every lane holds the same totals. Rows are re-read per pass (from L1/L2)
// instead of being kept in shared memory: V up to 50k+ would not fit. float32/float64/float16/
// bfloat16 storage, float accumulation (double for float64 rows). Per-element math:
// flowfast/simplex_math.h.
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda_utils.cuh"
#include "flowfast/simplex.h"

namespace ff {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / cuda::kWarp;

template <typename T>
using Acc = typename std::conditional<sizeof(T) == sizeof(double), double, float>::type;

template <typename T, typename A>
__device__ __forceinline__ T to_storage(A x) {
  if constexpr (sizeof(T) == 2) {
    return T(static_cast<float>(x));
  } else {
    return static_cast<T>(x);
  }
}

template <typename T, typename A>
__device__ __forceinline__ A load(const T* p, int64_t k) {
  return static_cast<A>(static_cast<float>(p[k]));
}
template <>
__device__ __forceinline__ double load<double, double>(const double* p, int64_t k) {
  return p[k];
}

// ---- field-wise xor shuffles of the reduced structs ----
template <typename A>
__device__ __forceinline__ A shuffle(A v, int mask) {
  return __shfl_xor_sync(0xffffffffu, v, mask);
}
template <typename A>
__device__ __forceinline__ LseAcc<A> shuffle(LseAcc<A> v, int mask) {
  return LseAcc<A>{shuffle(v.max, mask), shuffle(v.sum, mask)};
}
template <typename A>
__device__ __forceinline__ TangentStats<A> shuffle(TangentStats<A> v, int mask) {
  return TangentStats<A>{shuffle(v.max, mask), shuffle(v.sum, mask), shuffle(v.dot, mask)};
}
template <typename A>
__device__ __forceinline__ ArgMax<A> shuffle(ArgMax<A> v, int mask) {
  return ArgMax<A>{shuffle(v.value, mask), static_cast<int64_t>(shuffle(static_cast<long long>(v.index), mask))};
}
template <typename A>
__device__ __forceinline__ DistillSums<A> shuffle(DistillSums<A> v, int mask) {
  return DistillSums<A>{shuffle(v.loss, mask), shuffle(v.p_gpi, mask), shuffle(v.p_gsdot, mask),
                        shuffle(v.pdev_gsdot, mask), shuffle(v.p_dev, mask)};
}

/// Combines v over the LANES threads of a row group; every lane gets the total. For LANES >
/// warp the group is the block and `scratch` (kWarps entries of shared memory) carries the warps'
/// partials. Every thread of the block must call it (inactive rows with their empty totals).
template <int LANES, typename V, typename Merge>
__device__ __forceinline__ V group_reduce(V v, Merge merge, V* scratch) {
  constexpr int kInWarp = LANES < cuda::kWarp ? LANES : cuda::kWarp;
  for (int mask = kInWarp / 2; mask > 0; mask >>= 1) v = merge(v, shuffle(v, mask));
  if constexpr (LANES > cuda::kWarp) {
    static_assert(LANES == kThreads, "a row group wider than a warp is the whole block");
    if (threadIdx.x % cuda::kWarp == 0) scratch[threadIdx.x / cuda::kWarp] = v;
    __syncthreads();
    v = scratch[0];
    for (int w = 1; w < kWarps; ++w) v = merge(v, scratch[w]);
    __syncthreads();  // the scratch is reused by the next reduction
  }
  return v;
}

/// The row this thread's group owns, and the thread's lane in it.
template <int LANES>
struct RowSlot {
  int64_t row;
  int lane;
  bool active;

  __device__ static RowSlot mine(int64_t rows) {
    const int64_t r = static_cast<int64_t>(blockIdx.x) * (kThreads / LANES) + threadIdx.x / LANES;
    return RowSlot{r, static_cast<int>(threadIdx.x % LANES), r < rows};
  }
};

template <typename T, typename A>
struct StepArgs {
  const T* logits;
  const T* x;
  const A* gamma;
  int64_t R, V;
  T* x_new;
  int64_t* argmax;
  T* log_probs;
};

template <typename T, typename A, int LANES>
__global__ void __launch_bounds__(kThreads) step_kernel(StepArgs<T, A> a) {
  __shared__ LseAcc<A> lse_scratch[kWarps];
  __shared__ ArgMax<A> argmax_scratch[kWarps];
  const auto slot = RowSlot<LANES>::mine(a.R);
  const int64_t n = slot.active ? a.V : 0, row = slot.active ? slot.row * a.V : 0;
  LseAcc<A> lse = lse_empty<A>();
  ArgMax<A> best = argmax_empty<A>();
  for (int64_t v = slot.lane; v < n; v += LANES) {
    const A z = load<T, A>(a.logits, row + v);
    lse = lse_push(lse, z);
    if (best.index < 0 || z > best.value) best = ArgMax<A>{z, v};  // lanes walk v upwards
  }
  lse = group_reduce<LANES>(lse, [](LseAcc<A> l, LseAcc<A> r) { return lse_merge(l, r); }, lse_scratch);
  if (a.argmax) {
    best = group_reduce<LANES>(best, [](ArgMax<A> l, ArgMax<A> r) { return argmax_merge(l, r); }, argmax_scratch);
    if (slot.active && slot.lane == 0) a.argmax[slot.row] = best.index;
  }
  if (!slot.active) return;
  const A log_norm = lse_value(lse), g = a.gamma[slot.row];
  for (int64_t v = slot.lane; v < n; v += LANES) {
    const int64_t k = row + v;
    const A log_p = load<T, A>(a.logits, k) - log_norm;
    const A x = load<T, A>(a.x, k);  // read before the write: x_new may be x
    a.x_new[k] = to_storage<T>(x + g * (exp(log_p) - x));
    if (a.log_probs) a.log_probs[k] = to_storage<T>(log_p);
  }
}

template <typename T, typename A>
struct DistillArgs {
  DistillKind kind;
  const T* logits;
  const T* logits_dot;
  const T* target;
  const T* x;
  const A* s;
  const A* t;
  A min_one_minus_s, ce_weight, td_weight;
  int64_t R, V;
  A* loss;
  T* grad_z;
  T* grad_zdot;
};

template <typename T, typename A, int LANES>
__global__ void __launch_bounds__(kThreads) distill_kernel(DistillArgs<T, A> a) {
  __shared__ TangentStats<A> tangent_scratch[kWarps];
  __shared__ LseAcc<A> target_scratch[kWarps];
  __shared__ DistillSums<A> sums_scratch[kWarps];
  const auto slot = RowSlot<LANES>::mine(a.R);
  const int64_t n = slot.active ? a.V : 0, row = slot.active ? slot.row * a.V : 0;

  TangentStats<A> stats = tangent_empty<A>();
  LseAcc<A> target = lse_empty<A>();
  for (int64_t v = slot.lane; v < n; v += LANES) {
    stats = tangent_push(stats, load<T, A>(a.logits, row + v), load<T, A>(a.logits_dot, row + v));
    target = lse_push(target, load<T, A>(a.target, row + v));
  }
  stats = group_reduce<LANES>(stats, [](TangentStats<A> l, TangentStats<A> r) { return tangent_merge(l, r); },
                              tangent_scratch);
  target = group_reduce<LANES>(target, [](LseAcc<A> l, LseAcc<A> r) { return lse_merge(l, r); }, target_scratch);

  const A inv = static_cast<A>(1) / stats.sum, mean_zdot = stats.dot * inv;
  const A log_norm = stats.max + log(stats.sum), target_norm = lse_value(target);
  const auto c = slot.active ? DistillRow<A>::make(a.kind, a.s[slot.row], a.t[slot.row], a.min_one_minus_s,
                                                   a.ce_weight, a.td_weight)
                             : DistillRow<A>{};
  const auto terms = [&](int64_t k, A* p, A* dev) {
    const A log_p = load<T, A>(a.logits, k) - log_norm;
    *p = exp(log_p);
    *dev = load<T, A>(a.logits_dot, k) - mean_zdot;
    return distill_terms(c, *p, log_p, *dev, exp(load<T, A>(a.target, k) - target_norm),
                         a.x ? load<T, A>(a.x, k) : static_cast<A>(0));
  };
  DistillSums<A> sums{0, 0, 0, 0, 0};
  for (int64_t v = slot.lane; v < n; v += LANES) {
    A p, dev;
    const DistillTerms<A> e = terms(row + v, &p, &dev);  // sets p, dev: not in the same call's arguments
    sums.add(e, p, dev);
  }
  sums = group_reduce<LANES>(
      sums,
      [](DistillSums<A> l, const DistillSums<A>& r) {
        l.merge(r);
        return l;
      },
      sums_scratch);
  if (!slot.active) return;
  if (slot.lane == 0) a.loss[slot.row] = sums.loss;
  if (!a.grad_z) return;
  for (int64_t v = slot.lane; v < n; v += LANES) {
    A p, dev, gz, gzdot;
    const DistillTerms<A> e = terms(row + v, &p, &dev);
    distill_grads(e, p, dev, sums, &gz, &gzdot);
    a.grad_z[row + v] = to_storage<T>(gz);
    a.grad_zdot[row + v] = to_storage<T>(gzdot);
  }
}

/// Threads per row for rows of length V (the file comment's three layouts).
int lanes_for(int64_t V) { return V <= 64 ? 4 : (V <= 4096 ? cuda::kWarp : kThreads); }

int64_t blocks_for(int64_t R, int64_t V) {
  const int64_t per_block = kThreads / lanes_for(V);
  return (R + per_block - 1) / per_block;
}

// Launches kernel<LANES> with the lane count for rows of length V.
template <template <int> class Launch, typename Args>
void launch_for_rows(int64_t R, int64_t V, cudaStream_t stream, const Args& args) {
  const auto grid = static_cast<unsigned>(blocks_for(R, V));
  switch (lanes_for(V)) {
    case 4: Launch<4>::run(grid, stream, args); break;
    case cuda::kWarp: Launch<cuda::kWarp>::run(grid, stream, args); break;
    default: Launch<kThreads>::run(grid, stream, args);
  }
  FF_CUDA_CHECK(cudaGetLastError());
}

template <typename T, typename A>
struct StepLaunch {
  template <int LANES>
  struct With {
    static void run(unsigned grid, cudaStream_t stream, const StepArgs<T, A>& args) {
      FF_LAUNCH(grid, kThreads, 0, stream, step_kernel<T, A, LANES>)(args);
    }
  };
};

template <typename T, typename A>
struct DistillLaunch {
  template <int LANES>
  struct With {
    static void run(unsigned grid, cudaStream_t stream, const DistillArgs<T, A>& args) {
      FF_LAUNCH(grid, kThreads, 0, stream, distill_kernel<T, A, LANES>)(args);
    }
  };
};

void check_grid(int64_t R, int64_t V) {
  FF_CHECK(blocks_for(R, V) < 2147483647LL, "simplex: too many rows for one launch (", R, ")");
}

}  // namespace

void simplex_step_cuda(const SimplexStepParams& p) {
  cuda::DeviceGuard guard(p.logits.device_index);
  const int64_t R = p.logits.shape[0], V = p.logits.shape[1];
  check_grid(R, V);
  FF_DISPATCH_FLOATING_AND_HALF(p.logits.dtype, T, __half, __nv_bfloat16, "simplex", [&] {
    using A = Acc<T>;
    const StepArgs<T, A> args{static_cast<const T*>(p.logits.data), static_cast<const T*>(p.x.data),
                              static_cast<const A*>(p.gamma.data), R,
                              V,                                   static_cast<T*>(p.x_new.data),
                              static_cast<int64_t*>(p.argmax.data), static_cast<T*>(p.log_probs.data)};
    launch_for_rows<StepLaunch<T, A>::template With>(R, V, cuda::as_stream(p.stream), args);
  });
}

void simplex_distill_loss_cuda(const SimplexDistillParams& p) {
  cuda::DeviceGuard guard(p.logits.device_index);
  const int64_t R = p.logits.shape[0], V = p.logits.shape[1];
  check_grid(R, V);
  FF_DISPATCH_FLOATING_AND_HALF(p.logits.dtype, T, __half, __nv_bfloat16, "simplex", [&] {
    using A = Acc<T>;
    const DistillArgs<T, A> args{p.kind,
                                 static_cast<const T*>(p.logits.data),
                                 static_cast<const T*>(p.logits_dot.data),
                                 static_cast<const T*>(p.target_logits.data),
                                 static_cast<const T*>(p.x.data),
                                 static_cast<const A*>(p.s.data),
                                 static_cast<const A*>(p.t.data),
                                 static_cast<A>(p.min_one_minus_s),
                                 static_cast<A>(p.ce_weight),
                                 static_cast<A>(p.td_weight),
                                 R,
                                 V,
                                 static_cast<A*>(p.loss.data),
                                 static_cast<T*>(p.grad_z.data),
                                 static_cast<T*>(p.grad_zdot.data)};
    launch_for_rows<DistillLaunch<T, A>::template With>(R, V, cuda::as_stream(p.stream), args);
  });
}

}  // namespace ff
