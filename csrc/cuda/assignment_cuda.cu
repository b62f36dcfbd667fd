// CUDA twin of csrc/cpu/assignment_cpu.cpp: exact batched linear assignment, ONE THREAD BLOCK
// PER PROBLEM (grid = B), so many small problems fill the GPU in one launch.
//
// Per problem:
//   1. (square problems, n >= kAuctionMinN) a warm start by forward auction with eps-scaling
//      on costs normalized to [0, 1]:
//      warps bid for rows in parallel, a 64-bit atomicMax on (price bits, row) per column settles
//      conflicts, and the warp that outbids a row adopts it. Prices are float32; the auction only
//      produces column potentials, never the answer.
//   2. Greedy tight assignment: u_i = min_j (c_ij - v_j), row i takes its argmin column if free.
//   3. Exact shortest augmenting paths (Dijkstra on reduced costs, double precision) from every
//      row still free. Thread t owns columns t, t + BLOCK, ...; each Dijkstra step is one scan
//      plus one block argmin. Correctness only needs feasible potentials (reduced costs >= 0,
//      assigned edges tight), which steps 1-2 provide; the final matching is optimal.
// Greedy ties go to the smallest row (atomicMin), so results do not depend on warp timing there.
// Rectangular problems (n < m) skip step 1: optimality then also needs every free column at the
// same potential, which holds with v = 0 and shortest-path updates (same argument as the CPU).
//
// Assumes: cost (B, n, m) with unit column stride, n <= m < 2^31, finite values (checked in
// Python), workspace of assignment_cuda_workspace_bytes(B, n, m) bytes. Known limit: one SM per
// problem, so a single large problem uses 1/132 of an H100 (see docs/architecture.md).
#include <cfloat>
#include <climits>
#include <cstdint>

#include <math_constants.h>

#include "cuda_utils.cuh"
#include "flowfast/assignment.h"

namespace ff {
namespace {

constexpr uint32_t kNoOwner = 0xFFFFFFFFu;
constexpr int kAuctionMinN = 32;
constexpr float kEpsScaling = 8.0f;      // eps shrinks by this factor per auction phase
constexpr float kFinalEpsRel = 1e-6f;    // final eps relative to the cost range
constexpr int64_t kBidsPerRow = 256;     // auction budget; past it the warm start is dropped
constexpr int kValueProbeRows = 32;      // resolution check: sampled rows ...
constexpr int kProbeSmallest = 16;       // ... and how many of their best candidates
constexpr double kMinGapOverRange = 1e-11;  // closer candidates need the plain path's precision

// Per-problem slices of the caller's workspace (all 8-byte aligned).
struct Slices {
  double* u;                 // n   row potentials
  double* v;                 // m   column potentials
  double* shortest;          // m   Dijkstra labels
  unsigned long long* bids;  // m   auction: float price bits << 32 | owner row
  int* col4row;              // n
  int* row4col;              // m
  int* path;                 // m   predecessor row of each column in the Dijkstra tree
  int* settled;              // m   column settled in the current Dijkstra
  int* visited_rows;         // n   rows reached by the current Dijkstra, in order
};

__host__ __device__ inline int64_t round8(int64_t x) { return (x + 7) / 8 * 8; }

__host__ __device__ inline int64_t slice_bytes(int64_t n, int64_t m) {
  return 8 * n + 8 * m * 3 + round8(4 * n) * 2 + round8(4 * m) * 3;
}

__device__ Slices carve(char* base, int64_t n, int64_t m) {
  Slices s;
  s.u = reinterpret_cast<double*>(base);
  base += 8 * n;
  s.v = reinterpret_cast<double*>(base);
  base += 8 * m;
  s.shortest = reinterpret_cast<double*>(base);
  base += 8 * m;
  s.bids = reinterpret_cast<unsigned long long*>(base);
  base += 8 * m;
  s.col4row = reinterpret_cast<int*>(base);
  base += round8(4 * n);
  s.visited_rows = reinterpret_cast<int*>(base);
  base += round8(4 * n);
  s.row4col = reinterpret_cast<int*>(base);
  base += round8(4 * m);
  s.path = reinterpret_cast<int*>(base);
  base += round8(4 * m);
  s.settled = reinterpret_cast<int*>(base);
  return s;
}

struct Candidate {
  double value;
  int index;
  int is_free;
};

// Strict order used by every argmin: smaller value, then a free column (ends the search
// earlier), then the smaller index (determinism).
__device__ __forceinline__ bool better(const Candidate& a, const Candidate& b) {
  if (a.value != b.value) return a.value < b.value;
  if (a.is_free != b.is_free) return a.is_free > b.is_free;
  return a.index < b.index;
}

__device__ __forceinline__ Candidate no_candidate() { return Candidate{CUDART_INF, INT_MAX, 0}; }

__device__ __forceinline__ Candidate warp_argmin(Candidate c) {
  for (int offset = cuda::kWarp / 2; offset > 0; offset >>= 1) {
    Candidate o;
    o.value = __shfl_xor_sync(0xffffffffu, c.value, offset);
    o.index = __shfl_xor_sync(0xffffffffu, c.index, offset);
    o.is_free = __shfl_xor_sync(0xffffffffu, c.is_free, offset);
    if (better(o, c)) c = o;
  }
  return c;
}

// Every thread gets the block's best candidate. `scratch` has 2 * BLOCK/32 slots; `parity` alternates per call so one barrier suffices: a slot
// half is rewritten only after the next call's barrier, which every reader of it has passed.
template <int BLOCK>
__device__ Candidate block_argmin(Candidate c, Candidate* scratch, int parity) {
  const int lane = threadIdx.x % cuda::kWarp, warp = threadIdx.x / cuda::kWarp;
  constexpr int kWarps = BLOCK / cuda::kWarp;
  Candidate* buf = scratch + parity * kWarps;
  c = warp_argmin(c);
  if (lane == 0) buf[warp] = c;
  __syncthreads();
  return warp_argmin(lane < kWarps ? buf[lane] : no_candidate());
}

template <typename T>
struct CostRows {
  const T* data;
  int64_t row_stride;
  double sign;
  __device__ __forceinline__ double operator()(int i, int j) const {
    return sign * static_cast<double>(data[i * row_stride + j]);
  }
};

__device__ __forceinline__ float price_of(unsigned long long bid) {
  return __uint_as_float(static_cast<unsigned>(bid >> 32));
}
__device__ __forceinline__ unsigned long long make_bid(float price, uint32_t row) {
  return (static_cast<unsigned long long>(__float_as_uint(price)) << 32) | row;
}

// Two smallest values seen (second == best on a tie), merged across lanes.
struct Top2 {
  double best, second;
};

__device__ __forceinline__ Top2 top2_push(Top2 t, double x) {
  if (x < t.best) return Top2{x, t.best};
  return Top2{t.best, fmin(t.second, x)};
}

__device__ __forceinline__ Top2 warp_top2(Top2 t) {
  for (int offset = cuda::kWarp / 2; offset > 0; offset >>= 1) {
    const Top2 o{__shfl_xor_sync(0xffffffffu, t.best, offset), __shfl_xor_sync(0xffffffffu, t.second, offset)};
    t = Top2{fmin(t.best, o.best), fmin(fmax(t.best, o.best), fmin(t.second, o.second))};
  }
  return t;
}

struct CostRange {
  double lo, hi;  // smallest and largest sign * cost
};

// Every thread gets the block's (min, max) of sign * cost over the whole matrix.
template <typename T, int BLOCK>
__device__ CostRange block_cost_range(const CostRows<T>& cost, int n, int m) {
  __shared__ double bound_scratch[2 * (BLOCK / cuda::kWarp)];
  const int lane = threadIdx.x % cuda::kWarp, warp = threadIdx.x / cuda::kWarp;
  constexpr int kWarps = BLOCK / cuda::kWarp;
  double lo = CUDART_INF, hi = -CUDART_INF;
  for (int i = warp; i < n; i += kWarps) {
    for (int j = lane; j < m; j += cuda::kWarp) {
      const double c = cost(i, j);
      lo = fmin(lo, c);
      hi = fmax(hi, c);
    }
  }
  for (int offset = cuda::kWarp / 2; offset > 0; offset >>= 1) {
    lo = fmin(lo, __shfl_xor_sync(0xffffffffu, lo, offset));
    hi = fmax(hi, __shfl_xor_sync(0xffffffffu, hi, offset));
  }
  if (lane == 0) {
    bound_scratch[warp] = lo;
    bound_scratch[kWarps + warp] = hi;
  }
  __syncthreads();
  CostRange r{CUDART_INF, -CUDART_INF};
  for (int w = 0; w < kWarps; ++w) {
    r.lo = fmin(r.lo, bound_scratch[w]);
    r.hi = fmax(r.hi, bound_scratch[kWarps + w]);
  }
  return r;
}

// The CPU solver's resolution check (csrc/cpu/assignment_cpu.cpp, auction_prices_resolve), for
// the auction's final eps of kFinalEpsRel * range: auction prices end on the range's scale, so
// c - v in double keeps the costs' digits only down to ~1e-16 range. The warm start is skipped
// when (a) some row's two best candidates differ by less than kMinGapOverRange * range (tiny
// costs under a unit range, near-duplicate points, a bimodal cost 1e12 apart), or (b) a sampled
// row's kProbeSmallest best lie within the final eps of each other or have such a gap (huge
// outliers set the range: the prices carry no information). Exact ties are harmless. One warp
// per row; block-uniform result.
template <typename T, int BLOCK>
__device__ bool auction_prices_resolve(const CostRows<T>& cost, int n, int m, const CostRange& bounds) {
  __shared__ int resolves;
  const int lane = threadIdx.x % cuda::kWarp, warp = threadIdx.x / cuda::kWarp;
  constexpr int kWarps = BLOCK / cuda::kWarp;
  if (threadIdx.x == 0) resolves = 1;
  __syncthreads();
  const double lo = bounds.lo, range = bounds.hi - bounds.lo;
  const double min_gap = kMinGapOverRange * range, eps_final = static_cast<double>(kFinalEpsRel) * range;
  bool ok = true;
  for (int i = warp; i < n && ok; i += kWarps) {  // (a) every row's two best
    Top2 t{CUDART_INF, CUDART_INF};
    for (int j = lane; j < m; j += cuda::kWarp) t = top2_push(t, cost(i, j));
    t = warp_top2(t);
    const double gap = t.second - t.best;
    ok = !(gap > 0.0 && gap < min_gap);
  }
  const int probes = n < kValueProbeRows ? n : kValueProbeRows;
  const int k = m < kProbeSmallest ? m : kProbeSmallest;
  for (int q = warp; q < probes && ok; q += kWarps) {  // (b) sampled rows' k best, in order
    const int i = static_cast<int>(static_cast<int64_t>(q) * n / probes);
    Candidate previous{-CUDART_INF, -1, 0}, first{0.0, 0, 0};
    for (int r = 0; r < k && ok; ++r) {
      // The next (value, column) pair after `previous`: duplicates are kept, as a sort would.
      Candidate c = no_candidate();
      for (int j = lane; j < m; j += cuda::kWarp) {
        const Candidate o{cost(i, j) - lo, j, 0};
        const bool after = o.value > previous.value || (o.value == previous.value && o.index > previous.index);
        if (after && better(o, c)) c = o;
      }
      c = warp_argmin(c);
      if (r == 0) first = c;
      const double gap = c.value - previous.value;
      if (r > 0 && gap > 0.0 && gap < min_gap) ok = false;
      if (r == k - 1 && c.value - first.value < eps_final) ok = false;
      previous = c;
    }
  }
  if (!ok && lane == 0) atomicExch(&resolves, 0);
  __syncthreads();
  return resolves != 0;
}

// Forward auction on benefits -(c - min c) / range with eps-scaling, so prices are O(1) and float32
// resolves them whatever the cost offset. Leaves v = -price * range: any finite v is a valid warm
// start because step 2 recomputes u, also when the bid budget ran out.
template <typename T, int BLOCK>
__device__ void auction_warm_start(const CostRows<T>& cost, int n, int m, const Slices& s, const CostRange& bounds) {
  __shared__ int queue_head;
  __shared__ unsigned long long bids_made;
  __shared__ int aborted;
  const int lane = threadIdx.x % cuda::kWarp;

  // The cost range sets the eps schedule; float(min) is the min of the float-rounded costs.
  const float lo = static_cast<float>(bounds.lo), hi = static_cast<float>(bounds.hi);
  for (int j = threadIdx.x; j < m; j += BLOCK) s.bids[j] = make_bid(0.0f, kNoOwner);
  if (threadIdx.x == 0) {
    bids_made = 0;
    aborted = 0;
  }
  __syncthreads();
  const float range = hi - lo;
  const double lo_d = lo, inv_range = 1.0 / static_cast<double>(range);
  const unsigned long long budget = static_cast<unsigned long long>(kBidsPerRow) * n + 4096;

  if (range > 0.0f && isfinite(range)) {
    const float final_eps = kFinalEpsRel;  // prices are in units of `range`
    for (float eps = 0.25f;; eps /= kEpsScaling) {
      // New phase: keep prices, drop owners, every row bids again.
      for (int j = threadIdx.x; j < m; j += BLOCK) s.bids[j] = make_bid(price_of(__ldcg(&s.bids[j])), kNoOwner);
      if (threadIdx.x == 0) queue_head = 0;
      __syncthreads();

      int row = -1;
      if (lane == 0) row = atomicAdd(&queue_head, 1);
      row = __shfl_sync(0xffffffffu, row, 0);
      while (row < n) {
        // Broadcast so the whole warp leaves together (lanes need not be converged here).
        if (__shfl_sync(0xffffffffu, *reinterpret_cast<volatile int*>(&aborted), 0)) break;
        float best = -FLT_MAX, second = -FLT_MAX;
        int best_j = 0;
        for (int j = lane; j < m; j += cuda::kWarp) {
          const float value = -static_cast<float>((cost(row, j) - lo_d) * inv_range) - price_of(__ldcg(&s.bids[j]));
          if (value > best) {
            second = best;
            best = value;
            best_j = j;
          } else if (value > second) {
            second = value;
          }
        }
        for (int offset = cuda::kWarp / 2; offset > 0; offset >>= 1) {
          const float o_best = __shfl_xor_sync(0xffffffffu, best, offset);
          const float o_second = __shfl_xor_sync(0xffffffffu, second, offset);
          const int o_j = __shfl_xor_sync(0xffffffffu, best_j, offset);
          if (o_best > best || (o_best == best && o_j < best_j)) {
            second = fmaxf(best, o_second);
            best = o_best;
            best_j = o_j;
          } else {
            second = fmaxf(second, o_best);
          }
        }
        unsigned long long previous = 0, mine = 0;
        if (lane == 0) {
          const float price = price_of(__ldcg(&s.bids[best_j]));
          const float gap = (second == -FLT_MAX) ? eps : (best - second);
          float new_price = price + gap + eps;
          // Prices must strictly rise or bids could cycle once eps is below float resolution.
          new_price = fmaxf(new_price, nextafterf(price, FLT_MAX));
          mine = make_bid(new_price, static_cast<uint32_t>(row));
          previous = atomicMax(&s.bids[best_j], mine);
          if (atomicAdd(&bids_made, 1ull) > budget) atomicExch(&aborted, 1);
        }
        previous = __shfl_sync(0xffffffffu, previous, 0);
        mine = __shfl_sync(0xffffffffu, mine, 0);
        if (previous >= mine) continue;  // outbid before we landed: bid again with fresh prices
        const uint32_t evicted = static_cast<uint32_t>(previous & 0xFFFFFFFFull);
        if (evicted != kNoOwner) {
          row = static_cast<int>(evicted);  // adopt the row we displaced
        } else {
          if (lane == 0) row = atomicAdd(&queue_head, 1);
          row = __shfl_sync(0xffffffffu, row, 0);
        }
      }
      __syncthreads();
      if (aborted || eps <= final_eps) break;
    }
  }
  for (int j = threadIdx.x; j < m; j += BLOCK) {
    // Any finite v is a valid warm start (step 2 recomputes u), so keep prices even after an abort.
    const double scale = (range > 0.0f && isfinite(range)) ? static_cast<double>(range) : 0.0;
    s.v[j] = -static_cast<double>(price_of(__ldcg(&s.bids[j]))) * scale;
  }
  __syncthreads();
}

// u_i = min_j (c_ij - v_j); row i keeps its argmin column when nobody took it first.
template <typename T, int BLOCK>
__device__ void greedy_tight_assignment(const CostRows<T>& cost, int n, int m, const Slices& s) {
  const int lane = threadIdx.x % cuda::kWarp, warp = threadIdx.x / cuda::kWarp;
  constexpr int kWarps = BLOCK / cuda::kWarp;
  for (int i = warp; i < n; i += kWarps) {
    Candidate c = no_candidate();
    for (int j = lane; j < m; j += cuda::kWarp) {
      const Candidate o{cost(i, j) - s.v[j], j, 0};
      if (better(o, c)) c = o;
    }
    c = warp_argmin(c);
    if (lane == 0) {
      s.u[i] = c.value;
      s.col4row[i] = c.index;
      atomicMin(&s.row4col[c.index], i);  // smallest row wins, as in the CPU's sequential greedy
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < n; i += BLOCK) {
    if (s.row4col[s.col4row[i]] != i) s.col4row[i] = -1;
  }
  __syncthreads();
  for (int j = threadIdx.x; j < m; j += BLOCK) {
    if (s.row4col[j] == INT_MAX) s.row4col[j] = -1;
  }
  __syncthreads();
}

// One Dijkstra from free row `start`, then potential updates and path flip.
template <typename T, int BLOCK>
__device__ void augment_from(const CostRows<T>& cost, int start, int m, const Slices& s, Candidate* scratch) {
  for (int j = threadIdx.x; j < m; j += BLOCK) {
    s.shortest[j] = CUDART_INF;
    s.settled[j] = 0;
  }
  __syncthreads();

  double min_val = 0.0;
  int row = start, n_visited = 0, sink = -1;
  while (sink < 0) {
    if (threadIdx.x == 0) s.visited_rows[n_visited] = row;
    ++n_visited;
    const double base = min_val - s.u[row];
    Candidate c = no_candidate();
    for (int j = threadIdx.x; j < m; j += BLOCK) {
      if (s.settled[j]) continue;
      const double r = base + cost(row, j) - s.v[j];
      double sj = s.shortest[j];
      if (r < sj) {
        sj = r;
        s.shortest[j] = r;
        s.path[j] = row;
      }
      const Candidate o{sj, j, s.row4col[j] < 0 ? 1 : 0};
      if (better(o, c)) c = o;
    }
    c = block_argmin<BLOCK>(c, scratch, n_visited & 1);
    if (c.index == INT_MAX || !isfinite(c.value)) return;  // unreachable: |cost| <= 1e250 is checked in Python
    min_val = c.value;
    if (c.index % BLOCK == static_cast<int>(threadIdx.x)) s.settled[c.index] = 1;  // owner thread
    if (c.is_free) {
      sink = c.index;
    } else {
      row = s.row4col[c.index];
    }
  }
  __syncthreads();

  if (threadIdx.x == 0) s.u[start] += min_val;
  for (int k = 1 + threadIdx.x; k < n_visited; k += BLOCK) {
    const int r = s.visited_rows[k];
    s.u[r] += min_val - s.shortest[s.col4row[r]];
  }
  for (int j = threadIdx.x; j < m; j += BLOCK) {
    if (s.settled[j]) s.v[j] -= min_val - s.shortest[j];
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int j = sink;
    while (true) {
      const int r = s.path[j];
      s.row4col[j] = r;
      const int previous = s.col4row[r];
      s.col4row[r] = j;
      j = previous;
      if (r == start) break;
    }
  }
  __syncthreads();
}

template <typename T, int BLOCK>
__global__ void __launch_bounds__(BLOCK)
    assignment_kernel(const T* __restrict__ cost_base, int64_t batch_stride, int64_t row_stride, int n, int m,
                      double sign, char* workspace, int64_t bytes_per_problem, int64_t* __restrict__ out) {
  __shared__ Candidate scratch[2 * (BLOCK / cuda::kWarp)];
  const int b = blockIdx.x;
  const Slices s = carve(workspace + b * bytes_per_problem, n, m);
  const CostRows<T> cost{cost_base + b * batch_stride, row_stride, sign};

  for (int j = threadIdx.x; j < m; j += BLOCK) {
    s.row4col[j] = INT_MAX;  // "unclaimed" until greedy_tight_assignment turns it into -1
    s.v[j] = 0.0;
  }
  __syncthreads();
  if (n == m && n >= kAuctionMinN) {
    const CostRange bounds = block_cost_range<T, BLOCK>(cost, n, m);
    if (auction_prices_resolve<T, BLOCK>(cost, n, m, bounds)) auction_warm_start<T, BLOCK>(cost, n, m, s, bounds);
  }
  greedy_tight_assignment<T, BLOCK>(cost, n, m, s);
  for (int i = 0; i < n; ++i) {
    if (s.col4row[i] < 0) augment_from<T, BLOCK>(cost, i, m, s, scratch);
  }
  for (int i = threadIdx.x; i < n; i += BLOCK) out[static_cast<int64_t>(b) * n + i] = s.col4row[i];
}

template <typename T, int BLOCK>
void launch(const AssignmentParams& p) {
  const int64_t B = p.cost.shape[0], n = p.cost.shape[1], m = p.cost.shape[2];
  const int64_t per_problem = cuda::align_up(slice_bytes(n, m));
  FF_LAUNCH(static_cast<unsigned>(B), BLOCK, 0, cuda::as_stream(p.stream), assignment_kernel<T, BLOCK>)(
      static_cast<const T*>(p.cost.data), p.cost.strides[0], p.cost.strides[1], static_cast<int>(n),
      static_cast<int>(m), p.maximize ? -1.0 : 1.0, static_cast<char*>(p.workspace), per_problem,
      static_cast<int64_t*>(p.col_for_row.data));
  FF_CUDA_CHECK(cudaGetLastError());
}

template <typename T>
void launch_for_width(const AssignmentParams& p) {
  // A block wide enough that each thread owns a few columns at most.
  const int64_t m = p.cost.shape[2];
  if (m <= 128) return launch<T, 128>(p);
  if (m <= 256) return launch<T, 256>(p);
  if (m <= 512) return launch<T, 512>(p);
  return launch<T, 1024>(p);
}

}  // namespace

int64_t assignment_cuda_workspace_bytes(int64_t B, int64_t n, int64_t m) {
  return B * cuda::align_up(slice_bytes(n, m));
}

void assignment_cuda(const AssignmentParams& p) {
  FF_CHECK(p.cost.shape[0] <= INT_MAX, "linear_assignment: batch too large for one launch");
  FF_CHECK(p.cost.shape[2] < INT_MAX, "linear_assignment: too many columns");
  cuda::DeviceGuard guard(p.cost.device_index);
  FF_DISPATCH_FLOATING(p.cost.dtype, scalar_t, "linear_assignment", [&] { launch_for_width<scalar_t>(p); });
}

}  // namespace ff
