// Per-element formulas of the `dfm` family (PairFlow's closed-form inversion), shared by the CPU
// kernels, the CUDA kernels and mirrored by flowfast/reference/dfm.py:
//   PackLayout            how tokens of a V-word vocabulary are bit-packed into 64-bit words
//   matching_tokens       number of equal tokens of two packed sequences (XOR + field test + popcount)
//   match_weight          posterior weight gamma_t^(m - M) of a training sequence (m matches, M max)
//   keep_probability      P(token stays) in one backward step of the DFM CTMC (temperature tau)
//   resample_token        the keep/jump draw of one token from the counter-based RNG
// Conventions: t runs from 0 (source) to 1 (data), kappa_t = t, gamma_t = 1 + V t / (1 - t).
#pragma once

#include <cmath>
#include <cstdint>

#include "flowfast/common.h"
#include "flowfast/random.h"

namespace ff {

/// Largest vocabulary the packing supports (16 bits per token, 4 tokens per word).
constexpr int64_t kDfmMaxVocab = 1 << 16;

#if defined(__CUDA_ARCH__)
FF_HD int popcount64(uint64_t x) { return __popcll(x); }
#else
FF_HD int popcount64(uint64_t x) { return __builtin_popcountll(x); }
#endif

/// Tokens of `bits` bits each, `per_word` of them in the low bits of every 64-bit word (fields
/// never straddle words), `words` words per sequence; token d sits in word d / per_word at bit
/// bits * (d % per_word). Padding fields (past D, in the last word) are 0 when packed here, but
/// the counts never look at them (`last_high`): keys packed elsewhere cannot push a count out of
/// [0, D].
struct PackLayout {
  int bits = 1, per_word = 64, words = 0;
  uint64_t low = ~0ull;        // lowest bit of every field
  uint64_t high = ~0ull;       // highest bit of every field
  uint64_t last_high = ~0ull;  // highest bit of the fields of the last word that hold tokens
  uint64_t field = 1;          // mask of one field
};

FF_HD int token_bits(int64_t vocab) {
  int bits = 1;
  while ((int64_t{1} << bits) < vocab) ++bits;
  return bits;
}

FF_HD PackLayout pack_layout(int64_t vocab, int64_t length) {
  PackLayout L;
  L.bits = token_bits(vocab);
  L.per_word = 64 / L.bits;
  L.words = static_cast<int>((length + L.per_word - 1) / L.per_word);
  const int64_t in_last = length - static_cast<int64_t>(L.words - 1) * L.per_word;  // 1 .. per_word
  L.field = L.bits == 64 ? ~0ull : ((1ull << L.bits) - 1);
  L.low = 0;
  L.high = 0;
  L.last_high = 0;
  for (int j = 0; j < L.per_word; ++j) {
    L.low |= 1ull << (j * L.bits);
    L.high |= 1ull << (j * L.bits + L.bits - 1);
    if (j < in_last) L.last_high |= 1ull << (j * L.bits + L.bits - 1);
  }
  return L;
}

/// The field tops of word k that hold tokens (all of them but in the last word).
FF_HD uint64_t token_tops(const PackLayout& L, int k) { return k == L.words - 1 ? L.last_high : L.high; }

/// Word k's field tops (token_tops) set where the fields of a and b are equal: a field of
/// z = ~(a ^ b) is all ones iff equal, and adding 1 to its low bits (top bit cleared) carries into
/// the top bit exactly then. For 1-bit fields it is z itself.
template <bool kBinary>
FF_HD uint64_t equal_field_tops(uint64_t a, uint64_t b, const PackLayout& L, int k) {
  const uint64_t z = ~(a ^ b);
  if constexpr (kBinary) {
    return z & token_tops(L, k);
  } else {
    return ((z & ~L.high) + L.low) & z & token_tops(L, k);
  }
}

/// Equal tokens of two packed sequences (W words each): in [0, D].
template <bool kBinary>
FF_HD int matching_tokens(const uint64_t* a, const uint64_t* b, const PackLayout& L) {
  int m = 0;
  for (int k = 0; k < L.words; ++k) m += popcount64(equal_field_tops<kBinary>(a[k], b[k], L, k));
  return m;
}

FF_HD int unpack_token(const uint64_t* words, int64_t d, const PackLayout& L) {
  const uint64_t w = words[d / L.per_word];
  return static_cast<int>((w >> (L.bits * (d % L.per_word))) & L.field);
}

/// log gamma_t, +inf at t = 1 (the posterior is then uniform over the exact nearest matches).
FF_HD double log_gamma(double t, int64_t vocab) {
  if (t >= 1.0) return INFINITY;
  return log1p(static_cast<double>(vocab) * t / (1.0 - t));
}

/// Weight gamma^delta of a sequence delta = m - M <= 0 matches below the best one.
FF_HD double match_weight(int delta, double log_g) {
  if (delta == 0) return 1.0;
  if (log_g == static_cast<double>(INFINITY)) return 0.0;
  return exp(static_cast<double>(delta) * log_g);
}

/// Weights the kernels skip: below 2^-52 / N of the best weight (all N skipped ones together
/// change a posterior by less than one float64 rounding). `cutoff` = 52 ln 2 + ln N.
FF_HD double skip_cutoff(int64_t keys) { return 36.04365338911715 + log(static_cast<double>(keys > 1 ? keys : 1)); }

FF_HD bool negligible(int delta, double log_g, double cutoff) {
  if (delta == 0) return false;
  if (log_g == static_cast<double>(INFINITY)) return true;
  return -static_cast<double>(delta) * log_g > cutoff;
}

/// P(token stays) over a backward step of size h from t, given v = P(x1^d = x^d | x_t): the exact
/// time reversal keeps it with 1 - (V - 1) h v / (1 - t + t V); temperature tau raises the odds
/// of a jump to one specific token, rho = (h v / (1 - t + t V - h (V - 1) v)), to 1 / tau.
FF_HD double keep_probability(double v, double t, double h, int64_t vocab, double inv_tau) {
  const double jumps = static_cast<double>(vocab - 1);
  const double scale = 1.0 - t + t * static_cast<double>(vocab);
  if (inv_tau == 1.0) return 1.0 - jumps * h * v / scale;
  double rho = h * v / (scale - jumps * h * v);
  rho = pow(rho, inv_tau);
  return 1.0 / (1.0 + jumps * rho);
}

/// Philox draw of element `index` = row * D + d for step stream (seed, offset): the token stays
/// when u < keep, else moves to one of the other V - 1 tokens uniformly.
FF_HD int resample_token(int token, double keep, int64_t vocab, uint64_t seed, uint64_t offset, uint64_t index) {
  const PhiloxState r = philox4x32(static_cast<uint32_t>(index), static_cast<uint32_t>(index >> 32),
                                   static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32) ^ 0x85EBCA6Bu,
                                   static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  if (uniform_open01(r.x[0], r.x[1]) < keep) return token;
  int64_t shift = static_cast<int64_t>(uniform_open01(r.x[2], r.x[3]) * static_cast<double>(vocab - 1));
  if (shift > vocab - 2) shift = vocab - 2;
  return static_cast<int>((token + 1 + shift) % vocab);
}

}  // namespace ff
