// Per-element math of the `simplex` family, shared by the CPU and CUDA kernels (A: the
// accumulation type, float for 16/32-bit rows and double for float64 rows).
//
// A row holds logits z over V classes, p = softmax(z), its time tangent zdot = dz/dt (from a JVP)
// and pdot = d/dt p = p * (zdot - <p, zdot>). With dev = zdot - <p, zdot>, pdot = p dev. The
// distillation losses are functions of (p, pdot) plus a stop-gradient target q = softmax(target);
// for per-element partials g_pi = dL/dp and g_sdot = dL/dpdot the chain rule through the softmax
// and its JVP gives, with P = <p, g_pi>, G = <p, g_sdot>, H = <p dev, g_sdot>, D = <p, dev>:
//   dL/dzdot_v = p_v (g_sdot_v - G)
//   dL/dz_v    = p_v (g_pi_v - P) + p_v (dev_v (g_sdot_v - G) - (H - G D)) + direct_v
// where direct_v is a term written in logit space (ECLD's cross-entropy: ce (p_v - q_v)), which
// avoids g_pi = -q / p. D is 0 in exact arithmetic; keeping it makes the rounding consistent.
// Three passes per row: (1) softmax statistics and <p, zdot>, (2) the loss and P, G, H, D,
// (3) the gradients.
#pragma once

#include <cmath>

#include "flowfast/common.h"
#include "flowfast/lse.h"

namespace ff {

// Codes are part of the Python<->C++ contract (flowfast/ops/simplex.py mirrors them).
enum class DistillKind : int32_t { Ecld = 0, Csd = 1 };

/// Online softmax statistics of a row with its tangent: max, sum e^(z - max), sum e^(z - max) zdot.
template <typename A>
struct TangentStats {
  A max, sum, dot;
};

template <typename A>
FF_HD TangentStats<A> tangent_empty() {
  return TangentStats<A>{static_cast<A>(-INFINITY), static_cast<A>(0), static_cast<A>(0)};
}

template <typename A>
FF_HD TangentStats<A> tangent_push(TangentStats<A> acc, A z, A zdot) {
  if (z <= acc.max) {
    // z == max == -inf (a -inf logit into an empty accumulator) would add exp(nan), as in lse_push.
    if (z > static_cast<A>(-INFINITY)) {
      const A e = exp(z - acc.max);
      acc.sum += e;
      acc.dot += e * zdot;
    }
  } else {
    const A scale = exp(acc.max - z);  // 0 for an empty accumulator
    acc.sum = acc.sum * scale + static_cast<A>(1);
    acc.dot = acc.dot * scale + zdot;
    acc.max = z;
  }
  return acc;
}

template <typename A>
FF_HD TangentStats<A> tangent_merge(TangentStats<A> a, TangentStats<A> b) {
  if (b.max == static_cast<A>(-INFINITY)) return a;
  if (a.max == static_cast<A>(-INFINITY)) return b;
  if (a.max < b.max) {
    const TangentStats<A> swap = a;
    a = b;
    b = swap;
  }
  const A scale = exp(b.max - a.max);
  return TangentStats<A>{a.max, a.sum + b.sum * scale, a.dot + b.dot * scale};
}

/// Running maximum with its index; ties keep the lowest index (torch.argmax's rule).
template <typename A>
struct ArgMax {
  A value;
  int64_t index;
};

template <typename A>
FF_HD ArgMax<A> argmax_empty() {
  return ArgMax<A>{static_cast<A>(-INFINITY), -1};
}

template <typename A>
FF_HD ArgMax<A> argmax_merge(ArgMax<A> a, ArgMax<A> b) {
  if (b.index < 0) return a;
  if (a.index < 0) return b;
  if (b.value > a.value || (b.value == a.value && b.index < a.index)) return b;
  return a;
}

/// gamma = (t - s) / max(1 - s, min_one_minus_s): the flow map's interpolation weight.
template <typename A>
FF_HD A flow_map_gamma(A s, A t, A min_one_minus_s) {
  const A oms = static_cast<A>(1) - s;
  return (t - s) / (oms > min_one_minus_s ? oms : min_one_minus_s);
}

/// Constants of one row of a distillation loss.
template <typename A>
struct DistillRow {
  DistillKind kind;
  A gamma;        // (t - s) / (1 - s)_clamped
  A dgamma_dt;    // 1 / (1 - s)_clamped
  A one_minus_t;  // 1 - t
  A ce_weight, td_weight;

  FF_HD static DistillRow make(DistillKind kind, A s, A t, A min_one_minus_s, A ce_weight, A td_weight) {
    const A oms = static_cast<A>(1) - s;
    const A clamped = oms > min_one_minus_s ? oms : min_one_minus_s;
    return DistillRow{kind, (t - s) / clamped, static_cast<A>(1) / clamped, static_cast<A>(1) - t, ce_weight,
                      td_weight};
  }
};

/// Loss contribution of one element and its partials.
template <typename A>
struct DistillTerms {
  A loss, g_pi, g_sdot, direct;
};

/// p, log_p: softmax(z)_v and its log; dev = zdot_v - <p, zdot>; q = softmax(target)_v; x = x_v
/// (Csd only).
template <typename A>
FF_HD DistillTerms<A> distill_terms(const DistillRow<A>& c, A p, A log_p, A dev, A q, A x) {
  const A two = static_cast<A>(2);
  const A sdot = p * dev;
  if (c.kind == DistillKind::Ecld) {
    const A td = c.td_weight * c.gamma * c.gamma;
    return DistillTerms<A>{-c.ce_weight * q * log_p + td * sdot * sdot, static_cast<A>(0), two * td * sdot,
                           c.ce_weight * (p - q)};
  }
  // Csd: r = (1 - t) dX/dt - (q - X), X = x + gamma (p - x), dX/dt = (p - x) / (1 - s) + gamma pdot.
  const A landing = x + c.gamma * (p - x);
  const A r = c.one_minus_t * ((p - x) * c.dgamma_dt + c.gamma * sdot) - (q - landing);
  return DistillTerms<A>{r * r, two * r * c.one_minus_t * c.dgamma_dt, two * r * c.one_minus_t * c.gamma,
                         static_cast<A>(0)};
}

/// Row sums of pass 2: the loss and the dot products of the chain rule (see the file comment).
template <typename A>
struct DistillSums {
  A loss, p_gpi, p_gsdot, pdev_gsdot, p_dev;

  FF_HD void add(const DistillTerms<A>& e, A p, A dev) {
    loss += e.loss;
    p_gpi += p * e.g_pi;
    p_gsdot += p * e.g_sdot;
    pdev_gsdot += p * dev * e.g_sdot;
    p_dev += p * dev;
  }
  FF_HD void merge(const DistillSums& o) {
    loss += o.loss;
    p_gpi += o.p_gpi;
    p_gsdot += o.p_gsdot;
    pdev_gsdot += o.pdev_gsdot;
    p_dev += o.p_dev;
  }
};

/// dL/dz_v and dL/dzdot_v from the element's partials and the row sums.
template <typename A>
FF_HD void distill_grads(const DistillTerms<A>& e, A p, A dev, const DistillSums<A>& sums, A* grad_z, A* grad_zdot) {
  const A centred = e.g_sdot - sums.p_gsdot;
  *grad_zdot = p * centred;
  *grad_z = p * (e.g_pi - sums.p_gpi) + p * (dev * centred - (sums.pdev_gsdot - sums.p_gsdot * sums.p_dev)) +
            e.direct;
}

}  // namespace ff
