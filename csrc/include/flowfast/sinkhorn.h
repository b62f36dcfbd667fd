// Kernel family `sinkhorn`: batched log-domain Sinkhorn with eps-scaling, on a dense cost or on
// point clouds with the squared-Euclidean cost computed on the fly (no n x m matrix), plus
// reductions against the (never materialized unless asked) plan and Gumbel-max row sampling.
// CPU: csrc/cpu/sinkhorn_cpu.cpp. CUDA: csrc/cuda/sinkhorn_cuda.cu. Shared math:
// flowfast/sinkhorn_math.h. Python: flowfast/ops/sinkhorn.py, reference flowfast/reference/sinkhorn.py.
#pragma once

#include "flowfast/common.h"

namespace ff {

enum class SinkhornGeometry : int32_t { Dense = 0, SqEuclidean = 1 };

/// What is transported: costs and log-marginals. All float tensors share one dtype.
/// Dense: cost (B, n, m). SqEuclidean: x (B, n, d), y (B, m, d), C_ij = ||x_i - y_j||^2.
/// log_a (B, n), log_b (B, m): log of the marginal weights (any finite values; -inf not allowed).
struct SinkhornProblem {
  SinkhornGeometry geometry = SinkhornGeometry::Dense;
  TensorView cost, x, y;
  TensorView log_a, log_b;
  int64_t batch() const { return geometry == SinkhornGeometry::Dense ? cost.shape[0] : x.shape[0]; }
  int64_t rows() const { return geometry == SinkhornGeometry::Dense ? cost.shape[1] : x.shape[1]; }
  int64_t cols() const { return geometry == SinkhornGeometry::Dense ? cost.shape[2] : y.shape[1]; }
  int64_t dim() const { return geometry == SinkhornGeometry::Dense ? 0 : x.shape[2]; }
};

/// Solve: iterate potentials from the given f, g (zeros = cold start) and write them back.
/// eps of iteration k is max(eps, eps_start * eps_decay^k); convergence is only tested at the
/// target eps, every `check_every` iterations: balanced = L1 column-marginal error <= tol (rows
/// are exact after each f-update); unbalanced (reg_m > 0) = max potential change / eps <= tol.
struct SinkhornParams {
  SinkhornProblem problem;
  TensorView f, g;               // in/out (B, n), (B, m)
  TensorView n_iter;             // out (B,) int64
  TensorView marginal_error;     // out (B,) L1 marginal error of the returned potentials
  double eps = 1.0, eps_start = 1.0, eps_decay = 0.5;
  double reg_m = 0.0;            // <= 0: balanced
  int64_t max_iter = 1000, check_every = 10;
  double tol = 1e-6;
  void* workspace = nullptr;
  int64_t workspace_bytes = 0;
  void* stream = nullptr;
};

/// Reductions against the plan of given potentials. Every output is optional (null data = skip).
struct SinkhornPlanParams {
  SinkhornProblem problem;
  TensorView f, g;
  double eps = 1.0;
  TensorView plan;            // (B, n, m)  P itself
  TensorView row_mass;        // (B, n)     sum_j P_ij
  TensorView col_mass;        // (B, m)     sum_i P_ij
  TensorView transport_cost;  // (B,)       sum_ij P_ij C_ij
  TensorView plan_y;          // (B, n, d)  sum_j P_ij y_j   (SqEuclidean only)
  TensorView plan_t_x;        // (B, m, d)  sum_i P_ij x_i   (SqEuclidean only)
  void* stream = nullptr;
};

/// For every row i draw a column from P(j | i) proportional to exp((g_j - C_ij)/eps + log b_j) by
/// Gumbel-max with Philox(seed, offset, counter = (b * n + i) * m + j): no plan is formed, and CPU
/// and CUDA draw the same Gumbel noise.
struct SinkhornSampleParams {
  SinkhornProblem problem;
  TensorView g;
  double eps = 1.0;
  uint64_t seed = 0, offset = 0;
  TensorView cols;            // out (B, n) int64
  void* stream = nullptr;
};

int64_t sinkhorn_workspace_bytes(DeviceType device, int64_t B, int64_t n, int64_t m);

void sinkhorn_solve_cpu(const SinkhornParams& p);
void sinkhorn_plan_cpu(const SinkhornPlanParams& p);
void sinkhorn_sample_cpu(const SinkhornSampleParams& p);
#if defined(FLOWFAST_WITH_CUDA)
int64_t sinkhorn_cuda_workspace_bytes(int64_t B, int64_t n, int64_t m);
void sinkhorn_solve_cuda(const SinkhornParams& p);
void sinkhorn_plan_cuda(const SinkhornPlanParams& p);
void sinkhorn_sample_cuda(const SinkhornSampleParams& p);
#endif

/// The dispatch points of the family (validate, then route by device).
void sinkhorn_solve(const SinkhornParams& p);
void sinkhorn_plan(const SinkhornPlanParams& p);
void sinkhorn_sample(const SinkhornSampleParams& p);

}  // namespace ff
