// CPU kernels of the `dfm` family: token packing and PairFlow's inversion step. Queries run in
// parallel (OpenMP), each one in two passes over the packed training set: the match counts and
// their maximum M (XOR + field test + popcount, the hardware popcount where the CPU has it), then
// the weights gamma^(m - M) and the per-token sums over the set bits of the equality words only
// (a key adds to the tokens it shares with the query), skipping keys whose weight is negligible
// (near t = 1 that is all but the nearest few). Sums in float64 in key order: deterministic.
#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu/cpu_features.h"
#include "flowfast/dfm.h"

#if defined(FLOWFAST_WITH_OPENMP)
#include <omp.h>
#endif

namespace ff {
namespace {

int max_threads() {
#if defined(FLOWFAST_WITH_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}

int thread_id() {
#if defined(FLOWFAST_WITH_OPENMP)
  return omp_get_thread_num();
#else
  return 0;
#endif
}

/// counts[n] for one query against every key; returns the largest.
template <bool kBinary>
int query_counts(const uint64_t* query, const uint64_t* keys, int64_t N, const PackLayout& L, int32_t* counts) {
  int best = -1;
  for (int64_t n = 0; n < N; ++n) {
    const int m = matching_tokens<kBinary>(query, keys + n * L.words, L);
    counts[n] = m;
    best = std::max(best, m);
  }
  return best;
}

#if defined(FF_CPU_X86_SIMD)
// The same loop with the popcnt instruction spelled out: __builtin_popcountll inlined from a
// function without the target attribute may stay a libgcc call.
template <bool kBinary>
__attribute__((target("popcnt"))) int query_counts_popcnt(const uint64_t* query, const uint64_t* keys, int64_t N,
                                                           const PackLayout& L, int32_t* counts) {
  int best = -1;
  for (int64_t n = 0; n < N; ++n) {
    const uint64_t* key = keys + n * L.words;
    int m = 0;
    for (int k = 0; k < L.words; ++k) {
      m += static_cast<int>(_mm_popcnt_u64(equal_field_tops<kBinary>(query[k], key[k], L, k)));
    }
    counts[n] = m;
    best = std::max(best, m);
  }
  return best;
}
#endif

template <bool kBinary>
int counts_of(const uint64_t* query, const uint64_t* keys, int64_t N, const PackLayout& L, int32_t* counts) {
#if defined(FF_CPU_X86_SIMD)
  if (cpu::has_popcnt()) return query_counts_popcnt<kBinary>(query, keys, N, L, counts);
#endif
  return query_counts<kBinary>(query, keys, N, L, counts);
}

/// acc[d] += w for every token d where the key equals the query; field_of_bit maps the bit of a
/// field's top to its index in the word (no division in the loop).
template <bool kBinary>
inline void add_shared_tokens(const uint64_t* query, const uint64_t* key, double w, const PackLayout& L,
                              const uint8_t* field_of_bit, double* acc) {
  for (int k = 0; k < L.words; ++k) {
    uint64_t tops = equal_field_tops<kBinary>(query[k], key[k], L, k);
    const int64_t base = static_cast<int64_t>(k) * L.per_word;
    while (tops) {
      acc[base + field_of_bit[__builtin_ctzll(tops)]] += w;
      tops &= tops - 1;
    }
  }
}

template <bool kBinary>
void inversion_rows(const DfmStepParams& p, const PackLayout& L) {
  const int64_t B = p.x.shape[0], D = p.x.shape[1], N = p.keys.shape[0];
  const auto* keys = static_cast<const uint64_t*>(p.keys.data);
  const auto* xp = static_cast<const uint64_t*>(p.x_packed.data);
  const auto* x = static_cast<const int32_t*>(p.x.data);
  auto* x_new = static_cast<int32_t*>(p.x_new.data);
  auto* posterior = static_cast<float*>(p.posterior.data);
  auto* best_out = static_cast<int32_t*>(p.best.data);
  const double log_g = log_gamma(p.t, p.vocab);
  const double cutoff = skip_cutoff(N);
  // Weights depend only on how many matches a key is below the best: one table per call
  // (gamma^-k, 0 where negligible), the same numbers as match_weight.
  std::vector<double> weight_below(static_cast<size_t>(D) + 1);
  for (int64_t k = 0; k <= D; ++k) {
    const int delta = -static_cast<int>(k);
    weight_below[k] = negligible(delta, log_g, cutoff) ? 0.0 : match_weight(delta, log_g);
  }
  uint8_t field_of_bit[64];
  for (int bit = 0; bit < 64; ++bit) field_of_bit[bit] = static_cast<uint8_t>(bit / L.bits);

  // Scratch per thread, allocated here: nothing may throw inside the parallel region.
  const int threads = static_cast<int>(std::min<int64_t>(max_threads(), std::max<int64_t>(B, 1)));
  std::vector<int32_t> counts(static_cast<size_t>(threads) * static_cast<size_t>(N));
  std::vector<double> sums(static_cast<size_t>(threads) * static_cast<size_t>(D));

#if defined(FLOWFAST_WITH_OPENMP)
#pragma omp parallel num_threads(threads) if (B * N * L.words > (int64_t{1} << 18))  // waking threads costs ~ms
#endif
  {
    int32_t* my_counts = counts.data() + static_cast<size_t>(thread_id()) * N;
    double* acc = sums.data() + static_cast<size_t>(thread_id()) * D;
#if defined(FLOWFAST_WITH_OPENMP)
#pragma omp for schedule(dynamic, 1)
#endif
    for (int64_t b = 0; b < B; ++b) {
      const uint64_t* query = xp + b * L.words;
      const int best = counts_of<kBinary>(query, keys, N, L, my_counts);
      std::fill(acc, acc + D, 0.0);
      double total = 0.0;
      for (int64_t n = 0; n < N; ++n) {
        const double w = weight_below[best - my_counts[n]];
        if (w == 0.0) continue;
        total += w;
        add_shared_tokens<kBinary>(query, keys + n * L.words, w, L, field_of_bit, acc);
      }
      for (int64_t d = 0; d < D; ++d) {
        const double v = acc[d] / total;
        const int64_t e = b * D + d;
        if (posterior) posterior[e] = static_cast<float>(v);
        const double keep = keep_probability(v, p.t, p.h, p.vocab, p.inv_tau);
        x_new[e] = resample_token(x[e], keep, p.vocab, p.seed, p.offset,
                                  static_cast<uint64_t>(p.row_offset + b) * static_cast<uint64_t>(D) +
                                      static_cast<uint64_t>(d));
      }
      if (best_out) best_out[b] = best;
    }
  }
}

}  // namespace

void dfm_pack_cpu(const DfmPackParams& p) {
  const int64_t N = p.tokens.shape[0], D = p.tokens.shape[1];
  const PackLayout L = pack_layout(p.vocab, D);
  const auto* tokens = static_cast<const int32_t*>(p.tokens.data);
  auto* packed = static_cast<uint64_t*>(p.packed.data);
#if defined(FLOWFAST_WITH_OPENMP)
#pragma omp parallel for schedule(static) if (N * D > (int64_t{1} << 20))
#endif
  for (int64_t n = 0; n < N; ++n) {
    for (int k = 0; k < L.words; ++k) {
      uint64_t word = 0;
      const int64_t base = static_cast<int64_t>(k) * L.per_word;
      for (int j = 0; j < L.per_word && base + j < D; ++j) {
        word |= static_cast<uint64_t>(static_cast<uint32_t>(tokens[n * D + base + j])) << (L.bits * j);
      }
      packed[n * L.words + k] = word;
    }
  }
}

void dfm_inversion_step_cpu(const DfmStepParams& p) {
  const PackLayout L = pack_layout(p.vocab, p.x.shape[1]);
  if (L.bits == 1) {
    inversion_rows<true>(p, L);
  } else {
    inversion_rows<false>(p, L);
  }
}

}  // namespace ff
