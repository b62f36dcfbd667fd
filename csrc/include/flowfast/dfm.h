// Kernel family `dfm`: discrete flow models with a uniform source; PairFlow's closed-form
// inversion, which walks data back to source tokens under the exact time reversal of the DFM
// CTMC over the empirical data distribution (the training set), without ever materialising the
// B x N match or weight matrices. Two kernels:
//   dfm_pack:            tokens (N, D) -> bit-packed words (N, W)
//   dfm_inversion_step:  one backward step t -> t - h of B query sequences against N packed
//                        training sequences: match counts (popcount), posterior weights
//                        softmax_n(m_n log gamma_t) by an online softmax, per-token
//                        v_d = P(x1^d = x^d | x_t), and the keep/jump draw, fused.
// Per-element formulas: flowfast/dfm_math.h. CPU: csrc/cpu/dfm_cpu.cpp. CUDA: csrc/cuda/dfm_cuda.cu.
// Python: flowfast/ops/dfm.py; reference: flowfast/reference/dfm.py.
#pragma once

#include "flowfast/common.h"
#include "flowfast/dfm_math.h"

namespace ff {

/// tokens (N, D) int32 in [0, vocab) -> packed (N, W) int64 words (pack_layout(vocab, D)).
struct DfmPackParams {
  TensorView tokens, packed;
  int64_t vocab = 2;
  void* stream = nullptr;
};

/// One backward step from t to t - h (0 < h <= t <= 1) for the queries x (B, D) int32 (their
/// packed words x_packed (B, W) int64) against keys (N, W) int64, the packed training set:
///   m[b, n] = #{d : x[b, d] == X1[n, d]},  w[b, n] = softmax_n(m[b, n] log gamma_t)
///   v[b, d] = sum_n w[b, n] [X1[n, d] == x[b, d]],  x_new[b, d] = resample(x[b, d], keep(v))
/// x_new (B, D) int32 (distinct from x). Optional outputs (empty views skip them): posterior
/// v (B, D) float32 and best (B,) int32, the largest match count. The draw of element (b, d)
/// uses Philox (seed, offset) at index (row_offset + b) * D + d, so results do not depend on how
/// the caller batches the queries. Weights below 2^-52 / N of the best one are skipped.
struct DfmStepParams {
  TensorView keys, x, x_packed;
  TensorView x_new, posterior, best;
  int64_t vocab = 2;
  double t = 1.0, h = 0.05, inv_tau = 1.0;
  uint64_t seed = 0, offset = 0;
  int64_t row_offset = 0;
  void* stream = nullptr;
};

void dfm_pack_cpu(const DfmPackParams& p);
void dfm_inversion_step_cpu(const DfmStepParams& p);
#if defined(FLOWFAST_WITH_CUDA)
void dfm_pack_cuda(const DfmPackParams& p);
void dfm_inversion_step_cuda(const DfmStepParams& p);
#endif

void dfm_pack(const DfmPackParams& p);
void dfm_inversion_step(const DfmStepParams& p);

}  // namespace ff
