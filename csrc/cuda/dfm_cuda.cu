// CUDA twin of csrc/cpu/dfm_cpu.cpp: token packing and PairFlow's inversion step, written as an
// attention kernel with one-hot queries and keys. A block owns a tile of QB queries and a chunk
// of DC token positions (QB * DC <= 4096 entries, 16 per thread, accumulated in registers) and
// walks the packed training set in tiles of 64 keys:
//   1. match counts of the QB x 64 (query, key) pairs: XOR + field test + popcount over the W
//      words of both (the "Q K^T");
//   2. online softmax per query (one thread each, keys in order): running best count M, running
//      total, the rescale factor gamma^(M_old - M_new) of what was accumulated so far, and the
//      tile's weights, negligible ones set to 0;
//   3. every entry (b, d) rescales its sum and adds the weights of the tile's keys whose token d
//      equals the query's (the "P V" against one-hot values: a gather of one token per key).
// The epilogue divides by the total and draws the keep/jump of its tokens from Philox. Neither
// the B x N counts nor the weights exist outside shared memory; every sum runs in a fixed order
// in one thread (no atomics): the result is deterministic. Blocks of the same queries but other
// token chunks recompute the counts (cheap next to the sums for D <= 1024 per chunk).
#include <algorithm>
#include <cstdint>

#include "cuda_utils.cuh"
#include "flowfast/dfm.h"

namespace ff {
namespace {

constexpr int kThreads = 256;
constexpr int kEntriesPerThread = 16;
constexpr int kTileEntries = kThreads * kEntriesPerThread;  // QB * DC
constexpr int kKeysPerTile = 64;
constexpr int kMaxQueries = kTileEntries / kKeysPerTile;  // QB * 64 weights fit the weight tile
constexpr int kMaxChunk = 1024;

struct StepArgs {
  const uint64_t* keys;
  const int32_t* x;
  const uint64_t* x_packed;
  int32_t* x_new;
  float* posterior;
  int32_t* best_out;
  int64_t B, D, N;
  int queries_per_block, chunk;
  PackLayout layout;
  int64_t vocab;
  double t, h, inv_tau, log_g, cutoff;
  uint64_t seed, offset;
  int64_t row_offset;
};

template <bool kBinary>
__global__ void __launch_bounds__(kThreads) inversion_kernel(StepArgs a) {
  // Counts, then weights, of the tile's (query, key) pairs, [query][key]; -1 marks a pair past
  // the ends.
  __shared__ double pair_weight[kTileEntries];
  __shared__ int running_best[kMaxQueries];
  __shared__ double running_total[kMaxQueries];
  __shared__ double rescale[kMaxQueries];

  const int tid = threadIdx.x;
  const int QB = a.queries_per_block, DC = a.chunk;
  const int64_t b0 = static_cast<int64_t>(blockIdx.x) * QB;
  const int64_t d0 = static_cast<int64_t>(blockIdx.y) * DC;
  const PackLayout& L = a.layout;

  double acc[kEntriesPerThread];
  int token[kEntriesPerThread];
  unsigned owned = 0;  // bit j: entry j is a real (query, token) of this block (any token value)
#pragma unroll
  for (int j = 0; j < kEntriesPerThread; ++j) {
    const int e = tid + kThreads * j;
    const int64_t b = b0 + e / DC, d = d0 + e % DC;
    const bool mine = e < QB * DC && b < a.B && d < a.D;
    acc[j] = 0.0;
    token[j] = mine ? a.x[b * a.D + d] : 0;
    owned |= static_cast<unsigned>(mine) << j;
  }
  if (tid < QB) {
    running_best[tid] = -1;
    running_total[tid] = 0.0;
  }

  for (int64_t n0 = 0; n0 < a.N; n0 += kKeysPerTile) {
    __syncthreads();  // the previous tile's weights are consumed
    for (int i = tid; i < QB * kKeysPerTile; i += kThreads) {
      const int64_t b = b0 + i / kKeysPerTile, n = n0 + i % kKeysPerTile;
      pair_weight[i] = (b < a.B && n < a.N)
                           ? static_cast<double>(matching_tokens<kBinary>(a.x_packed + b * L.words, a.keys + n * L.words, L))
                           : -1.0;
    }
    __syncthreads();
    if (tid < QB) {
      double* w = pair_weight + tid * kKeysPerTile;
      int best = running_best[tid];
      for (int k = 0; k < kKeysPerTile; ++k) best = w[k] > best ? static_cast<int>(w[k]) : best;
      const double scale = running_best[tid] < 0 ? 0.0 : match_weight(running_best[tid] - best, a.log_g);
      double total = 0.0;
      for (int k = 0; k < kKeysPerTile; ++k) {
        double weight = 0.0;
        if (w[k] >= 0.0) {
          const int delta = static_cast<int>(w[k]) - best;
          weight = negligible(delta, a.log_g, a.cutoff) ? 0.0 : match_weight(delta, a.log_g);
        }
        w[k] = weight;
        total += weight;
      }
      running_total[tid] = running_total[tid] * scale + total;
      running_best[tid] = best;
      rescale[tid] = scale;
    }
    __syncthreads();
#pragma unroll
    for (int j = 0; j < kEntriesPerThread; ++j) {
      if (!((owned >> j) & 1u)) continue;
      const int e = tid + kThreads * j;
      const int bl = e / DC;
      const int64_t d = d0 + e % DC;
      const double* w = pair_weight + bl * kKeysPerTile;
      double sum = acc[j] * rescale[bl];
      for (int k = 0; k < kKeysPerTile; ++k) {
        if (w[k] == 0.0) continue;
        if (unpack_token(a.keys + (n0 + k) * L.words, d, L) == token[j]) sum += w[k];
      }
      acc[j] = sum;
    }
  }
  __syncthreads();

#pragma unroll
  for (int j = 0; j < kEntriesPerThread; ++j) {
    if (!((owned >> j) & 1u)) continue;
    const int e = tid + kThreads * j;
    const int64_t b = b0 + e / DC, d = d0 + e % DC;
    const double v = acc[j] / running_total[e / DC];
    const int64_t index = b * a.D + d;
    if (a.posterior) a.posterior[index] = static_cast<float>(v);
    const double keep = keep_probability(v, a.t, a.h, a.vocab, a.inv_tau);
    a.x_new[index] = resample_token(token[j], keep, a.vocab, a.seed, a.offset,
                                    static_cast<uint64_t>(a.row_offset + b) * static_cast<uint64_t>(a.D) +
                                        static_cast<uint64_t>(d));
  }
  if (a.best_out && blockIdx.y == 0 && tid < QB && b0 + tid < a.B) a.best_out[b0 + tid] = running_best[tid];
}

__global__ void __launch_bounds__(kThreads) pack_kernel(const int32_t* tokens, uint64_t* packed, int64_t N, int64_t D,
                                                        PackLayout L) {
  const int64_t total = N * L.words;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t n = i / L.words, base = (i % L.words) * L.per_word;
    uint64_t word = 0;
    for (int j = 0; j < L.per_word && base + j < D; ++j) {
      word |= static_cast<uint64_t>(static_cast<uint32_t>(tokens[n * D + base + j])) << (L.bits * j);
    }
    packed[i] = word;
  }
}

}  // namespace

void dfm_pack_cuda(const DfmPackParams& p) {
  cuda::DeviceGuard guard(p.tokens.device_index);
  const int64_t N = p.tokens.shape[0], D = p.tokens.shape[1];
  const PackLayout L = pack_layout(p.vocab, D);
  const int64_t words = N * L.words;
  const auto grid = static_cast<unsigned>(std::min<int64_t>((words + kThreads - 1) / kThreads, 65535));
  FF_LAUNCH(grid, kThreads, 0, cuda::as_stream(p.stream), pack_kernel)(
      static_cast<const int32_t*>(p.tokens.data), static_cast<uint64_t*>(p.packed.data), N, D, L);
  FF_CUDA_CHECK(cudaGetLastError());
}

void dfm_inversion_step_cuda(const DfmStepParams& p) {
  cuda::DeviceGuard guard(p.x.device_index);
  StepArgs a{};
  a.keys = static_cast<const uint64_t*>(p.keys.data);
  a.x = static_cast<const int32_t*>(p.x.data);
  a.x_packed = static_cast<const uint64_t*>(p.x_packed.data);
  a.x_new = static_cast<int32_t*>(p.x_new.data);
  a.posterior = static_cast<float*>(p.posterior.data);
  a.best_out = static_cast<int32_t*>(p.best.data);
  a.B = p.x.shape[0];
  a.D = p.x.shape[1];
  a.N = p.keys.shape[0];
  a.chunk = static_cast<int>(std::min<int64_t>((a.D + cuda::kWarp - 1) / cuda::kWarp * cuda::kWarp, kMaxChunk));
  a.queries_per_block = std::min(kMaxQueries, kTileEntries / a.chunk);
  a.layout = pack_layout(p.vocab, a.D);
  a.vocab = p.vocab;
  a.t = p.t;
  a.h = p.h;
  a.inv_tau = p.inv_tau;
  a.log_g = log_gamma(p.t, p.vocab);
  a.cutoff = skip_cutoff(a.N);
  a.seed = p.seed;
  a.offset = p.offset;
  a.row_offset = p.row_offset;
  const int64_t query_tiles = (a.B + a.queries_per_block - 1) / a.queries_per_block;
  const int64_t chunks = (a.D + a.chunk - 1) / a.chunk;
  FF_CHECK(query_tiles < 2147483647LL && chunks < 65536, "dfm: too many queries or tokens for one launch (B=", a.B,
           ", D=", a.D, ")");
  const dim3 grid(static_cast<unsigned>(query_tiles), static_cast<unsigned>(chunks));
  if (a.layout.bits == 1) {
    FF_LAUNCH(grid, kThreads, 0, cuda::as_stream(p.stream), inversion_kernel<true>)(a);
  } else {
    FF_LAUNCH(grid, kThreads, 0, cuda::as_stream(p.stream), inversion_kernel<false>)(a);
  }
  FF_CUDA_CHECK(cudaGetLastError());
}

}  // namespace ff
