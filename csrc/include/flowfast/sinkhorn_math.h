// Per-element math of the `sinkhorn` family, shared verbatim by csrc/cpu/sinkhorn_cpu.cpp and
// csrc/cuda/sinkhorn_cuda.cu so both backends run the same formulas (log-domain throughout).
//
// Convention: plan P_ij = exp((f_i + g_j - C_ij) / eps + log a_i + log b_j).
//   g-update: g_j = -eps * lam * LSE_i((f_i - C_ij) / eps + log a_i)
//   f-update: f_i = -eps * lam * LSE_j((g_j - C_ij) / eps + log b_j)
// with lam = reg_m / (reg_m + eps) for KL-relaxed marginals (unbalanced) and lam = 1 balanced.
#pragma once

#include <cmath>

#include "flowfast/common.h"
#include "flowfast/lse.h"

namespace ff {

FF_HD double unbalanced_factor(double eps, double reg_m) { return reg_m > 0.0 ? reg_m / (reg_m + eps) : 1.0; }

/// New potential from the log-sum-exp over the other side.
FF_HD double potential_from_lse(double lse, double eps, double lam) { return -eps * lam * lse; }

/// Log of the plan entry.
FF_HD double log_plan(double f, double g, double c, double eps, double log_a, double log_b) {
  return (f + g - c) / eps + log_a + log_b;
}

/// eps of iteration k under eps-scaling: eps_start * decay^k, never below the target eps.
FF_HD double eps_at(long long k, double eps_start, double decay, double eps) {
  if (eps_start <= eps || decay >= 1.0) return eps;
  const double e = eps_start * pow(decay, static_cast<double>(k));
  return e > eps ? e : eps;
}

}  // namespace ff
