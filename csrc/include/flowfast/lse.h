// Streaming log-sum-exp (the online-softmax normalizer of flash attention): a running max and
// the sum of exp(s - max), pushed one score at a time and merged across threads, so a softmax
// over n scores needs one pass and O(1) state. Shared by every family that normalizes in log
// space (sinkhorn's potential updates; softmax over a vocabulary or over a training set).
// A is the accumulation type: double on the CPU, the input's dtype on CUDA (the max shift keeps
// float32 stable).
#pragma once

#include <cmath>

#include "flowfast/common.h"

namespace ff {

template <typename A>
struct LseAcc {
  A max;
  A sum;
};

template <typename A>
FF_HD LseAcc<A> lse_empty() {
  return LseAcc<A>{static_cast<A>(-INFINITY), static_cast<A>(0)};
}

template <typename A>
FF_HD LseAcc<A> lse_push(LseAcc<A> acc, A s) {
  if (s <= acc.max) {
    // s == max == -inf (a -inf score into an empty accumulator) would add exp(nan).
    if (s > static_cast<A>(-INFINITY)) acc.sum += exp(s - acc.max);
  } else {
    acc.sum = acc.sum * exp(acc.max - s) + static_cast<A>(1);  // exp(-inf) = 0: empty accumulator
    acc.max = s;
  }
  return acc;
}

template <typename A>
FF_HD LseAcc<A> lse_merge(LseAcc<A> a, LseAcc<A> b) {
  if (b.max == static_cast<A>(-INFINITY)) return a;
  if (a.max == static_cast<A>(-INFINITY)) return b;
  if (a.max >= b.max) return LseAcc<A>{a.max, a.sum + b.sum * exp(b.max - a.max)};
  return LseAcc<A>{b.max, b.sum + a.sum * exp(a.max - b.max)};
}

template <typename A>
FF_HD A lse_value(LseAcc<A> acc) {
  return acc.max + log(acc.sum);
}

}  // namespace ff
