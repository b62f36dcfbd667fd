// CPU twin of csrc/cuda/simplex_cuda.cu: the flow-map step and the ECLD/CSD distillation loss,
// one row (position) at a time, rows in parallel (OpenMP). Each row's exponentials are computed
// once into a thread-local buffer and reused by the later passes. float32/float64/float16/
// bfloat16 storage; float accumulation for 16/32-bit rows, double for float64 (the CUDA rule).
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <utility>
#include <vector>

#include "cpu/simd_exp.h"
#include "flowfast/half.h"
#include "flowfast/simplex.h"

namespace ff {
namespace {

template <typename T>
using Acc = typename std::conditional<sizeof(T) == sizeof(double), double, float>::type;

// Calls body(r, buffer) for every row, rows in parallel; buffer holds `per_row` accumulators.
template <typename A, typename Body>
void for_each_row(int64_t rows, int64_t V, int64_t per_row, Body&& body) {
#if defined(FLOWFAST_WITH_OPENMP)
#pragma omp parallel if (rows * V > 32768)
#endif
  {
    std::vector<A> buffer(static_cast<size_t>(per_row * V));
#if defined(FLOWFAST_WITH_OPENMP)
#pragma omp for schedule(dynamic, 8)  // not static: a busy core would hold up the loop's end
#endif
    for (int64_t r = 0; r < rows; ++r) body(r, buffer.data());
  }
}

template <typename T>
const float* z_as_float(const T* z, int64_t V, float* scratch) {
  if constexpr (std::is_same<T, float>::value) {
    return z;
  } else {
    for (int64_t v = 0; v < V; ++v) scratch[v] = static_cast<float>(z[v]);
    return scratch;
  }
}

/// exp(z - max z) of a row into e; returns (max, sum). Float accumulation runs on a float copy of
/// the row (in e itself: each element is read before it is overwritten) with the AVX2 exp.
template <typename A, typename T>
std::pair<A, A> softmax_row(const T* z, int64_t V, A* e) {
  if constexpr (std::is_same<A, float>::value) {
    const float* zf = z_as_float(z, V, e);
    const float max = cpu::row_max(zf, V);
    return {max, cpu::exp_shifted(zf, V, max, e)};
  } else {
    A max = static_cast<A>(z[0]);
    for (int64_t v = 1; v < V; ++v) max = std::max(max, static_cast<A>(z[v]));
    A sum = 0;
    for (int64_t v = 0; v < V; ++v) {
      e[v] = std::exp(static_cast<A>(z[v]) - max);
      sum += e[v];
    }
    return {max, sum};
  }
}

/// The lowest index whose logit equals the row's max (torch.argmax's rule for ties).
template <typename A, typename T>
int64_t first_index_of(const T* z, int64_t V, A max) {
  for (int64_t v = 0; v < V; ++v)
    if (static_cast<A>(z[v]) == max) return v;
  return 0;
}

template <typename T>
void step(const SimplexStepParams& p) {
  using A = Acc<T>;
  const int64_t R = p.logits.shape[0], V = p.logits.shape[1];
  const T* logits = static_cast<const T*>(p.logits.data);
  const T* x = static_cast<const T*>(p.x.data);
  const A* gamma = static_cast<const A*>(p.gamma.data);
  T* x_new = static_cast<T*>(p.x_new.data);
  int64_t* argmax = static_cast<int64_t*>(p.argmax.data);
  T* log_probs = static_cast<T*>(p.log_probs.data);
  for_each_row<A>(R, V, 1, [&](int64_t r, A* e) {
    const T* z = logits + r * V;
    const auto [max, sum] = softmax_row(z, V, e);
    const A inv = static_cast<A>(1) / sum, log_norm = max + std::log(sum), g = gamma[r];
    const T* xr = x + r * V;
    T* out = x_new + r * V;
    for (int64_t v = 0; v < V; ++v) {
      const A xv = static_cast<A>(xr[v]);  // read before the write: x_new may be x
      out[v] = static_cast<T>(xv + g * (e[v] * inv - xv));
    }
    if (log_probs)
      for (int64_t v = 0; v < V; ++v) log_probs[r * V + v] = static_cast<T>(static_cast<A>(z[v]) - log_norm);
    if (argmax) argmax[r] = first_index_of(z, V, max);
  });
}

template <typename T>
void distill_loss(const SimplexDistillParams& p) {
  using A = Acc<T>;
  const int64_t R = p.logits.shape[0], V = p.logits.shape[1];
  const T* logits = static_cast<const T*>(p.logits.data);
  const T* logits_dot = static_cast<const T*>(p.logits_dot.data);
  const T* target = static_cast<const T*>(p.target_logits.data);
  const T* x = static_cast<const T*>(p.x.data);
  const A* s = static_cast<const A*>(p.s.data);
  const A* t = static_cast<const A*>(p.t.data);
  A* loss = static_cast<A*>(p.loss.data);
  T* grad_z = static_cast<T*>(p.grad_z.data);
  T* grad_zdot = static_cast<T*>(p.grad_zdot.data);
  for_each_row<A>(R, V, 2, [&](int64_t r, A* buffer) {
    const int64_t row = r * V;
    const T* z = logits + row;
    const T* zdot = logits_dot + row;
    A* e = buffer;      // exp(z - max z)
    A* eq = buffer + V;  // exp(target - max target)
    const auto [max_z, sum] = softmax_row(z, V, e);
    const A sum_q = softmax_row(target + row, V, eq).second;
    A dot = 0;
    for (int64_t v = 0; v < V; ++v) dot += e[v] * static_cast<A>(zdot[v]);
    const A inv = static_cast<A>(1) / sum, inv_q = static_cast<A>(1) / sum_q;
    const A mean_zdot = dot * inv, log_norm = max_z + std::log(sum);
    const auto c = DistillRow<A>::make(p.kind, s[r], t[r], static_cast<A>(p.min_one_minus_s),
                                       static_cast<A>(p.ce_weight), static_cast<A>(p.td_weight));
    const auto terms = [&](int64_t v, A* pv, A* dev) {
      *pv = e[v] * inv;
      *dev = static_cast<A>(zdot[v]) - mean_zdot;
      return distill_terms(c, *pv, static_cast<A>(z[v]) - log_norm, *dev, eq[v] * inv_q,
                           x ? static_cast<A>(x[row + v]) : static_cast<A>(0));
    };
    DistillSums<A> sums{0, 0, 0, 0, 0};
    for (int64_t v = 0; v < V; ++v) {
      A pv, dev;
      const DistillTerms<A> e_v = terms(v, &pv, &dev);  // sets pv, dev: not in the same call's arguments
      sums.add(e_v, pv, dev);
    }
    loss[r] = sums.loss;
    if (!grad_z) return;
    for (int64_t v = 0; v < V; ++v) {
      A pv, dev, gz, gzdot;
      const DistillTerms<A> e_v = terms(v, &pv, &dev);
      distill_grads(e_v, pv, dev, sums, &gz, &gzdot);
      grad_z[row + v] = static_cast<T>(gz);
      grad_zdot[row + v] = static_cast<T>(gzdot);
    }
  });
}

}  // namespace

void simplex_step_cpu(const SimplexStepParams& p) {
  FF_DISPATCH_FLOATING_AND_HALF(p.logits.dtype, scalar_t, Half, BFloat16, "simplex", [&] { step<scalar_t>(p); });
}

void simplex_distill_loss_cpu(const SimplexDistillParams& p) {
  FF_DISPATCH_FLOATING_AND_HALF(p.logits.dtype, scalar_t, Half, BFloat16, "simplex",
                                [&] { distill_loss<scalar_t>(p); });
}

}  // namespace ff
