// CUDA twin of csrc/cpu/sinkhorn_cpu.cpp: batched log-domain Sinkhorn, plan reductions and
// Gumbel-max sampling. The formulas are those of flowfast/sinkhorn_math.h, lse.h and random.h.
//
// One Sinkhorn iteration = a g-update then an f-update. Each update is a "partial" kernel that
// streams log-sum-exp accumulators over one slice of the reduced dimension (the slices add
// parallelism when B * n is small), then `finish_potential` merges the slices, writes the new
// potential and, on checking iterations, the per-problem marginal error / potential change.
// Problems that converged are frozen through `active[b]`; the host reads one int every
// `check_every` iterations to stop early.
//   dense g-update: one thread per column j walks its rows (coalesced across the warp).
//   dense f-update: one warp per row i walks its columns.
//   point clouds: FlashAttention-style tiles, a block of 128 query points against tiles of 32
//   key points staged in shared memory, C_ij = sum_k (p_ik - q_jk)^2 by differences (no
//   cancellation), so memory stays O((n + m) d) and n = m = 65536 fits.
// Accumulation is in the input dtype (float32 stays float32, stabilized by the running max).
// Assumes: unit stride in the last dim of cost / x / y, contiguous (B, n) potentials and
// marginals, a workspace of sinkhorn_cuda_workspace_bytes(B, n, m) bytes.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>

#include "cuda_utils.cuh"
#include "flowfast/random.h"
#include "flowfast/sinkhorn.h"
#include "flowfast/sinkhorn_math.h"

namespace ff {
namespace {

constexpr int kThreads = 256;
constexpr int kTileQueries = 128;  // online kernel: query points per block (one per thread)
constexpr int kTileKeys = 32;      // online kernel: key points per shared-memory tile
constexpr int kTileDims = 32;      // online kernel: features per shared-memory chunk
constexpr int64_t kTargetThreads = 256 * 1024;  // about one full H100 (132 SMs x 2048)

// Slices of the reduced dimension so that about kTargetThreads threads are busy.
int64_t split_count(int64_t B, int64_t outputs, int64_t reduced) {
  const int64_t want = (kTargetThreads + B * outputs - 1) / (B * outputs);
  const int64_t most = std::max<int64_t>(1, (reduced + 255) / 256);
  return std::max<int64_t>(1, std::min(std::min(want, most), int64_t{1024}));
}

struct Stats {  // per problem, in the workspace
  double err;
  unsigned long long change_bits;  // non-negative double as bits: atomicMax orders them correctly
  int active;
  int pad;
};

struct Workspace {
  Stats* stats;          // B
  int* any_active;       // 1
  void* partial;         // B * splits * outputs * 2 scalars (max, sum)
};

Workspace carve_workspace(void* base, int64_t B) {
  Workspace w;
  char* p = static_cast<char*>(base);
  w.stats = reinterpret_cast<Stats*>(p);
  p += cuda::align_up(B * static_cast<int64_t>(sizeof(Stats)));
  w.any_active = reinterpret_cast<int*>(p);
  p += 256;
  w.partial = p;
  return w;
}

// Cost of (row i, column j) of problem b. Dense: strided matrix (strides may be swapped to read
// the transpose). Point clouds: ||p_i - q_j||^2 (p, q swapped for the transpose).
template <typename T, bool kDense>
struct DevCost {
  const T* cost;
  int64_t batch_stride, row_stride, col_stride;
  const T* p;
  const T* q;
  int64_t p_batch, p_row, q_batch, q_row, d;

  __device__ __forceinline__ T operator()(int64_t b, int64_t i, int64_t j) const {
    if constexpr (kDense) {
      return cost[b * batch_stride + i * row_stride + j * col_stride];
    } else {
      const T* pi = p + b * p_batch + i * p_row;
      const T* qj = q + b * q_batch + j * q_row;
      T s = 0;
      for (int64_t k = 0; k < d; ++k) {
        const T diff = pi[k] - qj[k];
        s += diff * diff;
      }
      return s;
    }
  }

  // The CPU twin's cost: double accumulation, no FMA contraction (host x86-64 builds have none),
  // so Gumbel-max draws see bit-identical scores on both backends.
  __device__ __forceinline__ double exact(int64_t b, int64_t i, int64_t j) const {
    if constexpr (kDense) {
      return static_cast<double>(cost[b * batch_stride + i * row_stride + j * col_stride]);
    } else {
      const T* pi = p + b * p_batch + i * p_row;
      const T* qj = q + b * q_batch + j * q_row;
      double s = 0.0;
      for (int64_t k = 0; k < d; ++k) {
        const double diff = static_cast<double>(pi[k]) - static_cast<double>(qj[k]);
        s = __dadd_rn(s, __dmul_rn(diff, diff));
      }
      return s;
    }
  }
};

template <typename T, bool kDense>
DevCost<T, kDense> make_cost(const SinkhornProblem& pr, bool transpose) {
  DevCost<T, kDense> c{};
  if constexpr (kDense) {
    c.cost = static_cast<const T*>(pr.cost.data);
    c.batch_stride = pr.cost.strides[0];
    c.row_stride = transpose ? pr.cost.strides[2] : pr.cost.strides[1];
    c.col_stride = transpose ? pr.cost.strides[1] : pr.cost.strides[2];
  } else {
    const TensorView& P = transpose ? pr.y : pr.x;
    const TensorView& Q = transpose ? pr.x : pr.y;
    c.p = static_cast<const T*>(P.data);
    c.q = static_cast<const T*>(Q.data);
    c.p_batch = P.strides[0];
    c.p_row = P.strides[1];
    c.q_batch = Q.strides[0];
    c.q_row = Q.strides[1];
    c.d = P.shape[2];
  }
  return c;
}

template <typename T>
__device__ __forceinline__ LseAcc<T> warp_lse_merge(LseAcc<T> acc) {
  for (int offset = cuda::kWarp / 2; offset > 0; offset >>= 1) {
    LseAcc<T> o{__shfl_xor_sync(0xffffffffu, acc.max, offset), __shfl_xor_sync(0xffffffffu, acc.sum, offset)};
    acc = lse_merge(acc, o);
  }
  return acc;
}

template <typename T>
__device__ __forceinline__ void store_partial(T* partial, int64_t index, int64_t plane, LseAcc<T> acc) {
  partial[index] = acc.max;
  partial[plane + index] = acc.sum;
}

// ---- partial LSE kernels: partial layout [B][splits][outputs] for max, then the same for sum ----

// g-side of a dense cost: s_ij = (f_i - C_ij)/eps + log_a_i reduced over rows i of this slice.
template <typename T>
__global__ void dense_column_partial(DevCost<T, true> C, const T* f, const T* log_a, int64_t n, int64_t m,
                                     int64_t splits, T eps, const Stats* stats, T* partial) {
  const int64_t b = blockIdx.z, split = blockIdx.y;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (!stats[b].active || j >= m) return;
  const int64_t rows = (n + splits - 1) / splits, r0 = split * rows, r1 = min(n, r0 + rows);
  LseAcc<T> acc = lse_empty<T>();
  for (int64_t i = r0; i < r1; ++i) acc = lse_push(acc, (f[b * n + i] - C(b, i, j)) / eps + log_a[b * n + i]);
  const int64_t B = gridDim.z;
  store_partial(partial, (b * splits + split) * m + j, B * splits * m, acc);
}

// f-side of a dense cost: one warp per row, s_ij = (g_j - C_ij)/eps + log_b_j over all columns.
template <typename T>
__global__ void dense_row_lse(DevCost<T, true> C, const T* g, const T* log_b, int64_t n, int64_t m, T eps,
                              const Stats* stats, T* partial) {
  const int64_t b = blockIdx.z;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * (blockDim.x / cuda::kWarp) + threadIdx.x / cuda::kWarp;
  const int lane = threadIdx.x % cuda::kWarp;
  if (!stats[b].active || i >= n) return;  // whole warps leave together
  LseAcc<T> acc = lse_empty<T>();
  for (int64_t j = lane; j < m; j += cuda::kWarp) acc = lse_push(acc, (g[b * m + j] - C(b, i, j)) / eps + log_b[b * m + j]);
  acc = warp_lse_merge(acc);
  const int64_t B = gridDim.z;
  if (lane == 0) store_partial(partial, b * n + i, B * n, acc);
}

// Point clouds: query i against key j of this slice, s_ij = (h_j - ||p_i - q_j||^2)/eps + lw_j.
template <typename T>
__global__ void __launch_bounds__(kTileQueries)
    online_partial(const T* p, int64_t p_batch, int64_t p_row, const T* q, int64_t q_batch, int64_t q_row,
                   const T* h, const T* log_w, int64_t N, int64_t M, int64_t d, int64_t splits, T eps,
                   const Stats* stats, T* partial) {
  __shared__ T keys[kTileKeys][kTileDims + 1];
  __shared__ T key_bias[kTileKeys];
  __shared__ T key_lw[kTileKeys];
  const int64_t b = blockIdx.z, split = blockIdx.y;
  if (!stats[b].active) return;  // uniform per block
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kTileQueries + threadIdx.x;
  const bool valid = i < N;
  const T* pi = p + b * p_batch + (valid ? i : 0) * p_row;
  const int64_t per = (M + splits - 1) / splits, k0 = split * per, k1 = min(M, k0 + per);

  LseAcc<T> acc = lse_empty<T>();
  for (int64_t j0 = k0; j0 < k1; j0 += kTileKeys) {
    // Per-key terms of this tile, loaded whatever d is (d == 0 runs no feature chunk). The
    // barrier also orders the previous tile's reads of key_bias / key_lw / keys before these writes.
    __syncthreads();
    if (threadIdx.x < kTileKeys) {
      const int64_t j = j0 + threadIdx.x;
      key_bias[threadIdx.x] = j < k1 ? h[b * M + j] : T(0);
      key_lw[threadIdx.x] = j < k1 ? log_w[b * M + j] : T(0);
    }
    T dist[kTileKeys];
#pragma unroll
    for (int t = 0; t < kTileKeys; ++t) dist[t] = 0;
    for (int64_t c0 = 0; c0 < d; c0 += kTileDims) {
      if (c0 > 0) __syncthreads();  // previous chunk fully consumed
      for (int e = threadIdx.x; e < kTileKeys * kTileDims; e += kTileQueries) {
        const int t = e / kTileDims, k = e % kTileDims;
        const int64_t j = j0 + t, c = c0 + k;
        keys[t][k] = (j < k1 && c < d) ? q[b * q_batch + j * q_row + c] : T(0);
      }
      __syncthreads();
      T query[kTileDims];
#pragma unroll
      for (int k = 0; k < kTileDims; ++k) query[k] = (c0 + k < d) ? pi[c0 + k] : T(0);
#pragma unroll
      for (int t = 0; t < kTileKeys; ++t) {
        T s = 0;
#pragma unroll
        for (int k = 0; k < kTileDims; ++k) {
          const T diff = query[k] - keys[t][k];
          s += diff * diff;
        }
        dist[t] += s;
      }
    }
    if (d == 0) __syncthreads();  // uniform: makes key_bias / key_lw visible when no chunk ran
    // One rescale per tile, then 32 exps without divergence (lse_push per key would branch).
    T tile_max = static_cast<T>(-INFINITY);
#pragma unroll
    for (int t = 0; t < kTileKeys; ++t) {
      dist[t] = (j0 + t < k1) ? (key_bias[t] - dist[t]) / eps + key_lw[t] : static_cast<T>(-INFINITY);
      tile_max = fmax(tile_max, dist[t]);
    }
    if (tile_max > acc.max) {
      acc.sum *= exp(acc.max - tile_max);  // exp(-inf) = 0 for the empty accumulator
      acc.max = tile_max;
    }
    if (acc.max > static_cast<T>(-INFINITY)) {
#pragma unroll
      for (int t = 0; t < kTileKeys; ++t) acc.sum += exp(dist[t] - acc.max);
    }
  }
  const int64_t B = gridDim.z;
  if (valid) store_partial(partial, (b * splits + split) * N + i, B * splits * N, acc);
}

// Merge slices, write the new potential, and (when asked) accumulate the L1 marginal error of
// the plan BEFORE the update (error of side `log_w`) and the largest potential change.
template <typename T>
__global__ void finish_potential(const T* partial, int64_t splits, int64_t N, T* potential, const T* log_w, T eps,
                                 T lam, bool write, bool measure, Stats* stats) {
  __shared__ double block_err[kThreads / cuda::kWarp];
  __shared__ double block_change[kThreads / cuda::kWarp];
  const int64_t b = blockIdx.y;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (!stats[b].active) return;  // uniform per block
  const int64_t B = gridDim.y, plane = B * splits * N;
  double err = 0.0, change = 0.0;
  if (i < N) {
    LseAcc<T> acc = lse_empty<T>();
    for (int64_t s = 0; s < splits; ++s) {
      const int64_t k = (b * splits + s) * N + i;
      acc = lse_merge(acc, LseAcc<T>{partial[k], partial[plane + k]});
    }
    const T lse = lse_value(acc);
    const T old = potential[b * N + i];
    if (measure) {
      const T lw = log_w[b * N + i];
      err = fabs(static_cast<double>(exp(old / eps + lw + lse)) - static_cast<double>(exp(lw)));
    }
    const T updated = static_cast<T>(potential_from_lse(static_cast<double>(lse), static_cast<double>(eps),
                                                        static_cast<double>(lam)));
    change = fabs(static_cast<double>(updated) - static_cast<double>(old));
    if (write) potential[b * N + i] = updated;
  }
  if (!measure) return;
  for (int offset = cuda::kWarp / 2; offset > 0; offset >>= 1) {
    err += __shfl_xor_sync(0xffffffffu, err, offset);
    change = fmax(change, __shfl_xor_sync(0xffffffffu, change, offset));
  }
  const int lane = threadIdx.x % cuda::kWarp, warp = threadIdx.x / cuda::kWarp;
  if (lane == 0) {
    block_err[warp] = err;
    block_change[warp] = change;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    double e = 0.0, c = 0.0;
    for (int w = 0; w < kThreads / cuda::kWarp; ++w) {
      e += block_err[w];
      c = fmax(c, block_change[w]);
    }
    atomicAdd(&stats[b].err, e);
    atomicMax(&stats[b].change_bits, static_cast<unsigned long long>(__double_as_longlong(c)));
  }
}

__global__ void init_stats(Stats* stats, int64_t B, int64_t* n_iter) {
  for (int64_t b = threadIdx.x; b < B; b += blockDim.x) {
    stats[b] = Stats{0.0, 0ull, 1, 0};
    n_iter[b] = 0;
  }
}

__global__ void reset_measures(Stats* stats, int64_t B) {
  for (int64_t b = threadIdx.x; b < B; b += blockDim.x) {
    stats[b].err = 0.0;
    stats[b].change_bits = 0ull;
  }
}

// After a checking iteration: record iterations, freeze converged problems, count the rest.
__global__ void check_convergence(Stats* stats, int64_t B, int64_t* n_iter, int64_t iter, bool balanced, double eps,
                                  double tol, int* any_active) {
  __shared__ int count;
  if (threadIdx.x == 0) count = 0;
  __syncthreads();
  for (int64_t b = threadIdx.x; b < B; b += blockDim.x) {
    if (!stats[b].active) continue;
    n_iter[b] = iter;
    const double change = __longlong_as_double(static_cast<long long>(stats[b].change_bits));
    const bool done = balanced ? stats[b].err <= tol : change / eps <= tol;
    if (done) {
      stats[b].active = 0;
    } else {
      atomicAdd(&count, 1);
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) *any_active = count;
}

__global__ void record_iterations(const Stats* stats, int64_t B, int64_t* n_iter, int64_t total_iter) {
  for (int64_t b = threadIdx.x; b < B; b += blockDim.x) {
    if (stats[b].active) n_iter[b] = total_iter;
  }
}

template <typename T>
__global__ void write_error(const Stats* stats, int64_t B, T* out) {
  for (int64_t b = threadIdx.x; b < B; b += blockDim.x) out[b] = static_cast<T>(stats[b].err);
}

__global__ void activate_all(Stats* stats, int64_t B) {
  for (int64_t b = threadIdx.x; b < B; b += blockDim.x) stats[b].active = 1;
}

template <typename T, bool kDense>
struct Solver {
  const SinkhornParams& p;
  const SinkhornProblem& pr;
  Workspace ws;
  cudaStream_t stream;
  int64_t B, n, m, d;

  // LSE over rows for every column (g-side) into the partial buffer; returns the slice count.
  int64_t column_side(T eps) {
    const T* f = static_cast<const T*>(p.f.data);
    const T* log_a = static_cast<const T*>(pr.log_a.data);
    T* partial = static_cast<T*>(ws.partial);
    const int64_t splits = split_count(B, m, n);
    if constexpr (kDense) {
      dim3 grid((m + kThreads - 1) / kThreads, splits, B);
      FF_LAUNCH(grid, kThreads, 0, stream, dense_column_partial<T>)(
          make_cost<T, true>(pr, false), f, log_a, n, m, splits, eps, ws.stats, partial);
    } else {
      dim3 grid((m + kTileQueries - 1) / kTileQueries, splits, B);
      FF_LAUNCH(grid, kTileQueries, 0, stream, online_partial<T>)(
          static_cast<const T*>(pr.y.data), pr.y.strides[0], pr.y.strides[1], static_cast<const T*>(pr.x.data),
          pr.x.strides[0], pr.x.strides[1], f, log_a, m, n, d, splits, eps, ws.stats, partial);
    }
    FF_CUDA_CHECK(cudaGetLastError());
    return splits;
  }

  int64_t row_side(T eps) {
    const T* g = static_cast<const T*>(p.g.data);
    const T* log_b = static_cast<const T*>(pr.log_b.data);
    T* partial = static_cast<T*>(ws.partial);
    if constexpr (kDense) {
      const int warps = kThreads / cuda::kWarp;
      dim3 grid((n + warps - 1) / warps, 1, B);
      FF_LAUNCH(grid, kThreads, 0, stream, dense_row_lse<T>)(
          make_cost<T, true>(pr, false), g, log_b, n, m, eps, ws.stats, partial);
      FF_CUDA_CHECK(cudaGetLastError());
      return 1;
    } else {
      const int64_t splits = split_count(B, n, m);
      dim3 grid((n + kTileQueries - 1) / kTileQueries, splits, B);
      FF_LAUNCH(grid, kTileQueries, 0, stream, online_partial<T>)(
          static_cast<const T*>(pr.x.data), pr.x.strides[0], pr.x.strides[1], static_cast<const T*>(pr.y.data),
          pr.y.strides[0], pr.y.strides[1], g, log_b, n, m, d, splits, eps, ws.stats, partial);
      FF_CUDA_CHECK(cudaGetLastError());
      return splits;
    }
  }

  void finish(int64_t splits, int64_t N, T* potential, const T* log_w, T eps, T lam, bool write, bool measure) {
    dim3 grid((N + kThreads - 1) / kThreads, B);
    FF_LAUNCH(grid, kThreads, 0, stream, finish_potential<T>)(
        static_cast<const T*>(ws.partial), splits, N, potential, log_w, eps, lam, write, measure, ws.stats);
    FF_CUDA_CHECK(cudaGetLastError());
  }

  void run() {
    T* f = static_cast<T*>(p.f.data);
    T* g = static_cast<T*>(p.g.data);
    const T* log_a = static_cast<const T*>(pr.log_a.data);
    const T* log_b = static_cast<const T*>(pr.log_b.data);
    int64_t* n_iter = static_cast<int64_t*>(p.n_iter.data);
    const bool balanced = !(p.reg_m > 0.0);
    FF_LAUNCH(1, kThreads, 0, stream, init_stats)(ws.stats, B, n_iter);
    FF_CUDA_CHECK(cudaGetLastError());

    int64_t iter = 0;
    while (iter < p.max_iter) {
      const double eps = eps_at(iter, p.eps_start, p.eps_decay, p.eps);
      const T lam = static_cast<T>(unbalanced_factor(eps, p.reg_m));
      const bool check = eps == p.eps && ((iter + 1) % p.check_every == 0);
      if (check) FF_LAUNCH(1, kThreads, 0, stream, reset_measures)(ws.stats, B);
      // g-update (measuring the column error of the plan before it and the change of g), then
      // f-update (its change only matters to the unbalanced stopping rule).
      finish(column_side(static_cast<T>(eps)), m, g, log_b, static_cast<T>(eps), lam, true, check);
      finish(row_side(static_cast<T>(eps)), n, f, log_a, static_cast<T>(eps), lam, true, check && !balanced);
      ++iter;
      if (check) {
        FF_LAUNCH(1, kThreads, 0, stream, check_convergence)(ws.stats, B, n_iter, iter, balanced, eps, p.tol, ws.any_active);
        FF_CUDA_CHECK(cudaGetLastError());
        int any = 0;
        FF_CUDA_CHECK(cudaMemcpyAsync(&any, ws.any_active, sizeof(int), cudaMemcpyDeviceToHost, stream));
        FF_CUDA_CHECK(cudaStreamSynchronize(stream));
        if (any == 0) break;
        check_interrupt();  // the stream is idle here: stopping leaves no kernel reading freed memory
      }
    }
    // Error of what is returned, at the target eps, for every problem.
    finalize_error(iter);
  }

  void finalize_error(int64_t iter) {
    const T eps = static_cast<T>(p.eps);
    int64_t* n_iter = static_cast<int64_t*>(p.n_iter.data);
    // Record n_iter of still-active problems before reactivating everything for the measurement.
    FF_LAUNCH(1, kThreads, 0, stream, record_iterations)(ws.stats, B, n_iter, iter);
    FF_LAUNCH(1, kThreads, 0, stream, activate_all)(ws.stats, B);
    FF_LAUNCH(1, kThreads, 0, stream, reset_measures)(ws.stats, B);
    finish(column_side(eps), m, static_cast<T*>(p.g.data), static_cast<const T*>(pr.log_b.data), eps, T(1), false, true);
    if (p.reg_m > 0.0) {
      finish(row_side(eps), n, static_cast<T*>(p.f.data), static_cast<const T*>(pr.log_a.data), eps, T(1), false, true);
    }
    FF_LAUNCH(1, kThreads, 0, stream, write_error<T>)(ws.stats, B, static_cast<T*>(p.marginal_error.data));
    FF_CUDA_CHECK(cudaGetLastError());
  }
};

// ---- plan reductions ----

// One block per (row i, problem b) of the (possibly transposed) problem: mass, transport cost and
// optionally sum_j P_ij q_j, with P_ij = exp((f_i + g_j - C_ij)/eps + log_a_i + log_b_j).
template <typename T, bool kDense>
__global__ void plan_rows(DevCost<T, kDense> C, const T* f, const T* g, const T* log_a, const T* log_b, int64_t n,
                          int64_t m, T eps, T* mass, T* transport, const T* keys, int64_t key_batch, int64_t key_row,
                          int64_t d, T* weighted_keys, int64_t out_batch, int64_t out_row) {
  __shared__ T weights[kThreads];
  __shared__ T red_mass[kThreads / cuda::kWarp];
  __shared__ T red_cost[kThreads / cuda::kWarp];
  const int64_t i = blockIdx.x, b = blockIdx.y;
  const T fi = f[b * n + i], lai = log_a[b * n + i];
  T my_mass = 0, my_cost = 0;
  // Each thread owns features threadIdx.x, threadIdx.x + kThreads, ... of weighted_keys[b, i, :]
  // and accumulates into them in place: no other thread writes those entries.
  T* out = weighted_keys ? weighted_keys + b * out_batch + i * out_row : nullptr;
  if (out) {
    for (int64_t c = threadIdx.x; c < d; c += kThreads) out[c] = 0;
  }
  for (int64_t j0 = 0; j0 < m; j0 += kThreads) {
    const int64_t j = j0 + threadIdx.x;
    T w = 0;
    if (j < m) {
      const T c = C(b, i, j);
      w = exp(static_cast<T>(log_plan(fi, g[b * m + j], c, eps, lai, log_b[b * m + j])));
      my_mass += w;
      my_cost += w * c;
    }
    if (out) {
      __syncthreads();  // previous chunk's weights fully consumed
      weights[threadIdx.x] = w;
      __syncthreads();
      const int64_t count = (m - j0 < kThreads) ? (m - j0) : kThreads;
      for (int64_t c = threadIdx.x; c < d; c += kThreads) {
        T s = 0;
        for (int64_t t = 0; t < count; ++t) s += weights[t] * keys[b * key_batch + (j0 + t) * key_row + c];
        out[c] += s;
      }
    }
  }
  for (int offset = cuda::kWarp / 2; offset > 0; offset >>= 1) {
    my_mass += __shfl_xor_sync(0xffffffffu, my_mass, offset);
    my_cost += __shfl_xor_sync(0xffffffffu, my_cost, offset);
  }
  const int lane = threadIdx.x % cuda::kWarp, warp = threadIdx.x / cuda::kWarp;
  if (lane == 0) {
    red_mass[warp] = my_mass;
    red_cost[warp] = my_cost;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    T total_mass = 0, total_cost = 0;
    for (int w = 0; w < kThreads / cuda::kWarp; ++w) {
      total_mass += red_mass[w];
      total_cost += red_cost[w];
    }
    if (mass) mass[b * n + i] = total_mass;
    if (transport) atomicAdd(&transport[b], total_cost);
  }
}

// Dense cost, column side: one thread per column streams the rows (coalesced across the warp),
// where the transposed plan_rows would read the matrix with stride m.
template <typename T>
__global__ void dense_plan_columns(DevCost<T, true> C, const T* f, const T* g, const T* log_a, const T* log_b,
                                   int64_t n, int64_t m, T eps, T* col_mass) {
  const int64_t b = blockIdx.y;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= m) return;
  const T gj = g[b * m + j], lbj = log_b[b * m + j];
  T mass = 0;
  for (int64_t i = 0; i < n; ++i) {
    mass += exp(static_cast<T>(log_plan(f[b * n + i], gj, C(b, i, j), eps, log_a[b * n + i], lbj)));
  }
  col_mass[b * m + j] = mass;
}

template <typename T, bool kDense>
__global__ void plan_dense(DevCost<T, kDense> C, const T* f, const T* g, const T* log_a, const T* log_b, int64_t B,
                           int64_t n, int64_t m, T eps, T* plan, int64_t s0, int64_t s1, int64_t s2) {
  const int64_t total = B * n * m;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < total;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = k / (n * m), i = (k / m) % n, j = k % m;
    plan[b * s0 + i * s1 + j * s2] =
        exp(static_cast<T>(log_plan(f[b * n + i], g[b * m + j], C(b, i, j), eps, log_a[b * n + i], log_b[b * m + j])));
  }
}

// One warp per row: argmax_j (g_j - C_ij)/eps + log_b_j + Gumbel(seed, offset, (b n + i) m + j).
template <typename T, bool kDense>
__global__ void sample_rows(DevCost<T, kDense> C, const T* g, const T* log_b, int64_t B, int64_t n, int64_t m, double eps,
                            uint64_t seed, uint64_t offset, int64_t* cols, int64_t cols_batch, int64_t cols_row) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / cuda::kWarp) + threadIdx.x / cuda::kWarp;
  const int lane = threadIdx.x % cuda::kWarp;
  if (row >= B * n) return;  // whole warps
  const int64_t b = row / n, i = row % n;
  double best = -INFINITY;
  int64_t best_j = 0;
  for (int64_t j = lane; j < m; j += cuda::kWarp) {
    const double score = (static_cast<double>(g[b * m + j]) - C.exact(b, i, j)) / eps +
                         static_cast<double>(log_b[b * m + j]) +
                         gumbel(seed, offset, static_cast<uint64_t>(row) * static_cast<uint64_t>(m) + j);
    if (score > best) {
      best = score;
      best_j = j;
    }
  }
  for (int offset_ = cuda::kWarp / 2; offset_ > 0; offset_ >>= 1) {
    const double o = __shfl_xor_sync(0xffffffffu, best, offset_);
    const int64_t oj = __shfl_xor_sync(0xffffffffu, best_j, offset_);
    if (o > best || (o == best && oj < best_j)) {
      best = o;
      best_j = oj;
    }
  }
  if (lane == 0) cols[b * cols_batch + i * cols_row] = best_j;
}

template <typename T, bool kDense>
void plan_impl(const SinkhornPlanParams& p) {
  const SinkhornProblem& pr = p.problem;
  cudaStream_t stream = cuda::as_stream(p.stream);
  const int64_t B = pr.batch(), n = pr.rows(), m = pr.cols(), d = pr.dim();
  const T* f = static_cast<const T*>(p.f.data);
  const T* g = static_cast<const T*>(p.g.data);
  const T* la = static_cast<const T*>(pr.log_a.data);
  const T* lb = static_cast<const T*>(pr.log_b.data);
  const T eps = static_cast<T>(p.eps);
  if (p.plan.data) {
    const int64_t total = B * n * m;
    const int blocks = static_cast<int>(std::min<int64_t>((total + kThreads - 1) / kThreads, 65535));
    FF_LAUNCH(blocks, kThreads, 0, stream, plan_dense<T, kDense>)(
        make_cost<T, kDense>(pr, false), f, g, la, lb, B, n, m, eps, static_cast<T*>(p.plan.data), p.plan.strides[0],
        p.plan.strides[1], p.plan.strides[2]);
    FF_CUDA_CHECK(cudaGetLastError());
  }
  if (p.transport_cost.data) FF_CUDA_CHECK(cudaMemsetAsync(p.transport_cost.data, 0, B * sizeof(T), stream));
  if (p.row_mass.data || p.transport_cost.data || p.plan_y.data) {
    const T* keys = kDense ? nullptr : static_cast<const T*>(pr.y.data);
    FF_LAUNCH(dim3(n, B), kThreads, 0, stream, plan_rows<T, kDense>)(
        make_cost<T, kDense>(pr, false), f, g, la, lb, n, m, eps, static_cast<T*>(p.row_mass.data),
        static_cast<T*>(p.transport_cost.data), keys, kDense ? 0 : pr.y.strides[0], kDense ? 0 : pr.y.strides[1], d,
        static_cast<T*>(p.plan_y.data), p.plan_y.strides[0], p.plan_y.strides[1]);
    FF_CUDA_CHECK(cudaGetLastError());
  }
  if constexpr (kDense) {
    if (p.col_mass.data) {
      FF_LAUNCH(dim3((m + kThreads - 1) / kThreads, B), kThreads, 0, stream, dense_plan_columns<T>)(
          make_cost<T, true>(pr, false), f, g, la, lb, n, m, eps, static_cast<T*>(p.col_mass.data));
      FF_CUDA_CHECK(cudaGetLastError());
    }
  } else if (p.col_mass.data || p.plan_t_x.data) {
    // The transpose: rows become columns, f and g, log_a and log_b, x and y swap places.
    FF_LAUNCH(dim3(m, B), kThreads, 0, stream, plan_rows<T, false>)(
        make_cost<T, false>(pr, true), g, f, lb, la, m, n, eps, static_cast<T*>(p.col_mass.data), nullptr,
        static_cast<const T*>(pr.x.data), pr.x.strides[0], pr.x.strides[1], d, static_cast<T*>(p.plan_t_x.data),
        p.plan_t_x.strides[0], p.plan_t_x.strides[1]);
    FF_CUDA_CHECK(cudaGetLastError());
  }
}

template <typename T, bool kDense>
void sample_impl(const SinkhornSampleParams& p) {
  const SinkhornProblem& pr = p.problem;
  const int64_t B = pr.batch(), n = pr.rows(), m = pr.cols();
  const int warps = kThreads / cuda::kWarp;
  const int64_t blocks = (B * n + warps - 1) / warps;
  FF_LAUNCH(static_cast<unsigned>(blocks), kThreads, 0, cuda::as_stream(p.stream), sample_rows<T, kDense>)(
      make_cost<T, kDense>(pr, false), static_cast<const T*>(p.g.data), static_cast<const T*>(pr.log_b.data), B, n, m,
      p.eps, p.seed, p.offset, static_cast<int64_t*>(p.cols.data), p.cols.strides[0],
      p.cols.strides[1]);
  FF_CUDA_CHECK(cudaGetLastError());
}

template <typename Params, typename Body>
void with_types(const Params& p, DType dtype, Body&& body) {
  FF_DISPATCH_FLOATING(dtype, scalar_t, "sinkhorn", [&] {
    if (p.problem.geometry == SinkhornGeometry::Dense) {
      body(scalar_t{}, std::true_type{});
    } else {
      body(scalar_t{}, std::false_type{});
    }
  });
}

// Grid y/z dimensions carry the batch and the split count.
void check_launchable(const SinkhornProblem& pr) {
  FF_CHECK(pr.batch() <= 65535, "sinkhorn: at most 65535 problems per CUDA call, got B=", pr.batch());
}

}  // namespace

int64_t sinkhorn_cuda_workspace_bytes(int64_t B, int64_t n, int64_t m) {
  const int64_t partial_entries =
      std::max(split_count(B, m, n) * m, split_count(B, n, m) * n) * B * 2;  // (max, sum) per slice and output
  return cuda::align_up(B * static_cast<int64_t>(sizeof(Stats))) + 256 +
         cuda::align_up(partial_entries * static_cast<int64_t>(sizeof(double)));
}

void sinkhorn_solve_cuda(const SinkhornParams& p) {
  check_launchable(p.problem);
  cuda::DeviceGuard guard(p.f.device_index);
  with_types(p, p.f.dtype, [&](auto t, auto dense) {
    using T = decltype(t);
    Solver<T, decltype(dense)::value> solver{p, p.problem, carve_workspace(p.workspace, p.problem.batch()),
                                             cuda::as_stream(p.stream), p.problem.batch(), p.problem.rows(),
                                             p.problem.cols(), p.problem.dim()};
    solver.run();
  });
}

void sinkhorn_plan_cuda(const SinkhornPlanParams& p) {
  check_launchable(p.problem);
  cuda::DeviceGuard guard(p.f.device_index);
  with_types(p, p.f.dtype, [&](auto t, auto dense) { plan_impl<decltype(t), decltype(dense)::value>(p); });
}

void sinkhorn_sample_cuda(const SinkhornSampleParams& p) {
  cuda::DeviceGuard guard(p.g.device_index);
  with_types(p, p.g.dtype, [&](auto t, auto dense) { sample_impl<decltype(t), decltype(dense)::value>(p); });
}

}  // namespace ff
