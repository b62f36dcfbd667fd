// CPU twin of csrc/cuda/sinkhorn_cuda.cu: log-domain Sinkhorn, plan reductions and Gumbel-max
// sampling, for a dense cost or the on-the-fly squared-Euclidean cost. Problems of a batch are
// solved one after the other, each update parallel (OpenMP) over rows or column blocks.
// Everything is computed in double, whatever the input dtype; a dense cost's half-steps and plan
// reductions run the fused SIMD loops of csrc/cpu/sinkhorn_lse.h (one pass over the matrix each).
#include <algorithm>
#include <cmath>
#include <memory>
#include <type_traits>
#include <vector>

#if defined(FLOWFAST_WITH_OPENMP)
#include <omp.h>
#endif

#include "cpu/simd_exp.h"
#include "cpu/simd_gumbel.h"
#include "cpu/sinkhorn_kernel_space.h"
#include "cpu/sinkhorn_lse.h"
#include "flowfast/random.h"
#include "flowfast/sinkhorn.h"
#include "flowfast/sinkhorn_math.h"

namespace ff {
namespace {

constexpr int64_t kColumnBlock = 256;  // columns whose accumulators one thread streams rows into
// The dense g-side's blocks: each row's slice is whole cache lines, each thread gets several
// blocks from m = 128 on, and the width does not depend on the thread count (nor do the results).
constexpr int64_t kDenseColumnBlock = 64;

// Cost access for one problem of the batch. kDense: a strided (n, m) matrix; otherwise rows of x
// and y (unit stride in the feature dim) and C_ij = ||x_i - y_j||^2 computed on the fly.
template <typename T, bool kDense>
struct CostView {
  const T* cost = nullptr;
  int64_t cost_row = 0, cost_col = 0;
  const T* x = nullptr;
  const T* y = nullptr;
  int64_t x_row = 0, y_row = 0, d = 0;

  double operator()(int64_t i, int64_t j) const {
    if constexpr (kDense) {
      return static_cast<double>(cost[i * cost_row + j * cost_col]);
    } else {
      const T* xi = x + i * x_row;
      const T* yj = y + j * y_row;
      double s = 0.0;
      for (int64_t k = 0; k < d; ++k) {
        const double diff = static_cast<double>(xi[k]) - static_cast<double>(yj[k]);
        s += diff * diff;
      }
      return s;
    }
  }
};

template <typename T, bool kDense>
CostView<T, kDense> bind(const SinkhornProblem& pr, int64_t b) {
  CostView<T, kDense> v;
  if constexpr (kDense) {
    v.cost = static_cast<const T*>(pr.cost.data) + b * pr.cost.strides[0];
    v.cost_row = pr.cost.strides[1];
    v.cost_col = pr.cost.strides[2];
  } else {
    v.x = static_cast<const T*>(pr.x.data) + b * pr.x.strides[0];
    v.y = static_cast<const T*>(pr.y.data) + b * pr.y.strides[0];
    v.x_row = pr.x.strides[1];
    v.y_row = pr.y.strides[1];
    v.d = pr.x.shape[2];
  }
  return v;
}

// Reads row b of a (B, k) view into doubles.
template <typename T>
void load_row(const TensorView& t, int64_t b, std::vector<double>& out) {
  const T* p = static_cast<const T*>(t.data) + b * t.strides[0];
  out.resize(t.shape[1]);
  for (int64_t k = 0; k < t.shape[1]; ++k) out[k] = static_cast<double>(p[k * t.strides[1]]);
}

template <typename T>
void store_row(const TensorView& t, int64_t b, const std::vector<double>& in) {
  T* p = static_cast<T*>(t.data) + b * t.strides[0];
  for (int64_t k = 0; k < t.shape[1]; ++k) p[k * t.strides[1]] = static_cast<T>(in[k]);
}

// Point clouds: lse_i = LSE_j((h_j - C_ij)/eps + log_w_j) for the `rows` rows of the (possibly
// transposed: the roles of x and y swap) problem against its `cols` columns. The columns' points
// are copied features-major in double once per call, so a cost row is d vector FMAs per four
// columns (by differences); its exp-sum is shifted by the entry value of lse_i like the dense
// passes (cpu::shifted_row_lse).
template <typename T, bool kTransposed>
void cloud_lse(const CostView<T, false>& C, int64_t rows, int64_t cols, const double* h, const double* log_w,
               double eps, double* lse) {
  const double inv_eps = 1.0 / eps;
  const int64_t d = C.d;
  const T* p_base = kTransposed ? C.y : C.x;
  const int64_t p_row = kTransposed ? C.y_row : C.x_row;
  const T* q = kTransposed ? C.x : C.y;
  const int64_t q_row = kTransposed ? C.x_row : C.y_row;
  std::vector<double> q_soa(static_cast<size_t>(d) * cols);
  for (int64_t j = 0; j < cols; ++j) {
    for (int64_t k = 0; k < d; ++k) q_soa[k * cols + j] = static_cast<double>(q[j * q_row + k]);
  }
#if defined(FLOWFAST_WITH_OPENMP)
#pragma omp parallel if (rows * cols > 16384)
#endif
  {
    std::vector<double> costs(4 * cols), points(4 * d);
#if defined(FLOWFAST_WITH_OPENMP)
#pragma omp for schedule(dynamic, 2)
#endif
    for (int64_t i0 = 0; i0 < rows; i0 += 4) {
      // Four rows per pass over q (a short last group repeats its first point, results unused).
      const int64_t group = std::min<int64_t>(4, rows - i0);
      for (int64_t r = 0; r < 4; ++r) {
        const T* point = p_base + (i0 + (r < group ? r : 0)) * p_row;
        for (int64_t k = 0; k < d; ++k) points[r * d + k] = static_cast<double>(point[k]);
      }
      cpu::sq_dist_rows4(points.data(), q_soa.data(), cols, d, costs.data());
      for (int64_t r = 0; r < group; ++r) {
        lse[i0 + r] = cpu::shifted_row_lse<double, T>(costs.data() + r * cols, h, log_w, cols, inv_eps, lse[i0 + r]);
      }
    }
  }
}


// Dense f-side: lse_i = LSE_j((h_j - C_ij)/eps + log_w_j), one pass per row shifted by the entry
// value of lse_i (a guess: the previous iteration's), a second pass where the row's max is not
// within kShiftWindow of it.
template <typename T>
void dense_row_lse(const CostView<T, true>& C, int64_t n, int64_t m, const double* h, const double* log_w,
                   double eps, double* lse) {
  const double inv_eps = 1.0 / eps;
#if defined(FLOWFAST_WITH_OPENMP)
#pragma omp parallel for schedule(dynamic, 16) if (n * m > 16384)
#endif
  for (int64_t i = 0; i < n; ++i) lse[i] = cpu::shifted_row_lse(C.cost + i * C.cost_row, h, log_w, m, inv_eps, lse[i]);
}

// Dense g-side: lse_j = LSE_i((f_i - C_ij)/eps + log_a_i), streaming the rows through column
// blocks (the matrix is read row-major), shifted like dense_row_lse: one pass per block unless a
// column's max strays from its guess.
template <typename T>
void dense_column_lse(const CostView<T, true>& C, int64_t n, int64_t m, const double* f, const double* log_a,
                      double eps, double* lse) {
  const double inv_eps = 1.0 / eps;
#if defined(FLOWFAST_WITH_OPENMP)
#pragma omp parallel for schedule(dynamic, 1) if (n * m > 16384)
#endif
  for (int64_t j0 = 0; j0 < m; j0 += kDenseColumnBlock) {
    const int64_t width = std::min(m, j0 + kDenseColumnBlock) - j0;
    double shift[kDenseColumnBlock], top[kDenseColumnBlock], sum[kDenseColumnBlock];
    for (int64_t k = 0; k < width; ++k) shift[k] = cpu::start_shift(lse[j0 + k]);
    // The second pass shifts by the max itself; a third only where rounding of scores past ~1e16
    // (beyond what double resolves anyway) left a column's max off by more than the window.
    for (int pass = 0, again = 1; again && pass < 3; ++pass) {
      std::fill(top, top + width, -INFINITY);
      std::fill(sum, sum + width, 0.0);
      for (int64_t i = 0; i < n; ++i) {
        cpu::column_shifted_accumulate(C.cost + i * C.cost_row + j0, f[i], log_a[i], width, inv_eps, shift, top, sum);
      }
      again = 0;
      for (int64_t k = 0; k < width; ++k) {
        if (!(std::fabs(top[k]) <= cpu::kShiftWindow) && std::isfinite(top[k])) {
          shift[k] += top[k];
          again = 1;
        }
      }
    }
    for (int64_t k = 0; k < width; ++k) lse[j0 + k] = shift[k] + std::log(sum[k]);
  }
}

// The two half-steps of an iteration, for either geometry.
template <typename T, bool kDense>
void column_lse(const CostView<T, kDense>& C, int64_t n, int64_t m, const double* f, const double* log_a,
                double eps, double* lse_out) {
  if constexpr (kDense) {
    dense_column_lse<T>(C, n, m, f, log_a, eps, lse_out);
  } else {
    cloud_lse<T, true>(C, m, n, f, log_a, eps, lse_out);
  }
}

template <typename T, bool kDense>
void row_lse(const CostView<T, kDense>& C, int64_t n, int64_t m, const double* g, const double* log_b, double eps,
             double* lse_out) {
  if constexpr (kDense) {
    dense_row_lse<T>(C, n, m, g, log_b, eps, lse_out);
  } else {
    cloud_lse<T, false>(C, n, m, g, log_b, eps, lse_out);
  }
}

double l1_mass_error(const std::vector<double>& potential, const std::vector<double>& log_w,
                     const std::vector<double>& lse, double eps) {
  double err = 0.0;
  for (size_t k = 0; k < potential.size(); ++k) {
    err += std::fabs(std::exp(potential[k] / eps + log_w[k] + lse[k]) - std::exp(log_w[k]));
  }
  return err;
}

template <typename T, bool kDense>
void solve_one(const SinkhornParams& p, int64_t b) {
  const SinkhornProblem& pr = p.problem;
  const int64_t n = pr.rows(), m = pr.cols();
  const auto C = bind<T, kDense>(pr, b);
  std::vector<double> f, g, log_a, log_b, lse_rows(n), lse_cols(m);
  load_row<T>(p.f, b, f);
  load_row<T>(p.g, b, g);
  load_row<T>(pr.log_a, b, log_a);
  load_row<T>(pr.log_b, b, log_b);
  const bool balanced = !(p.reg_m > 0.0);
  // Dense costs up to 2^24 entries: kernel-space half-steps (matrix-vector products), each falling
  // back to the log-domain pass where K cannot serve it.
  std::unique_ptr<cpu::KernelSpaceSinkhorn<T>> kernel_space;
  if constexpr (kDense) {
    if (n * m <= cpu::KernelSpaceSinkhorn<T>::kMaxEntries) {
      kernel_space.reset(new cpu::KernelSpaceSinkhorn<T>(C.cost, C.cost_row, n, m, log_a.data(), log_b.data()));
    }
  }
  // The log-domain passes shift their exp-sums by the entry value of lse: the LSE that would give
  // back the current potential (at a fixed point, the result itself).
  auto guess = [&](const std::vector<double>& potential, double eps, std::vector<double>& lse) {
    const double scale = -1.0 / (eps * unbalanced_factor(eps, p.reg_m));
    for (size_t k = 0; k < lse.size(); ++k) lse[k] = potential[k] * scale;
  };
  auto columns = [&](double eps) {
    if (kernel_space && kernel_space->columns(f.data(), g.data(), eps, lse_cols.data())) return;
    guess(g, eps, lse_cols);
    column_lse(C, n, m, f.data(), log_a.data(), eps, lse_cols.data());
  };
  auto rows = [&](double eps) {
    if (kernel_space && kernel_space->rows(g.data(), f.data(), eps, lse_rows.data())) return;
    guess(f, eps, lse_rows);
    row_lse(C, n, m, g.data(), log_b.data(), eps, lse_rows.data());
  };

  int64_t iter = 0;
  while (iter < p.max_iter) {
    check_interrupt();
    const double eps = eps_at(iter, p.eps_start, p.eps_decay, p.eps);
    const double lam = unbalanced_factor(eps, p.reg_m);
    const bool check = eps == p.eps && ((iter + 1) % p.check_every == 0);
    double change = 0.0;

    columns(eps);
    // Before g moves, lse_cols gives the column marginals of the current plan: a free test.
    const double err_before = (check && balanced) ? l1_mass_error(g, log_b, lse_cols, eps) : 0.0;
    for (int64_t j = 0; j < m; ++j) {
      const double gj = potential_from_lse(lse_cols[j], eps, lam);
      change = std::max(change, std::fabs(gj - g[j]));
      g[j] = gj;
    }
    rows(eps);
    for (int64_t i = 0; i < n; ++i) {
      const double fi = potential_from_lse(lse_rows[i], eps, lam);
      change = std::max(change, std::fabs(fi - f[i]));
      f[i] = fi;
    }
    ++iter;
    if (check && (balanced ? err_before <= p.tol : change / eps <= p.tol)) break;
  }

  // Report the error of what is returned: columns (and rows, if unbalanced) of the final plan.
  columns(p.eps);
  double err = l1_mass_error(g, log_b, lse_cols, p.eps);
  if (!balanced) {
    rows(p.eps);
    err += l1_mass_error(f, log_a, lse_rows, p.eps);
  }
  store_row<T>(p.f, b, f);
  store_row<T>(p.g, b, g);
  static_cast<int64_t*>(p.n_iter.data)[b * p.n_iter.strides[0]] = iter;
  static_cast<T*>(p.marginal_error.data)[b * p.marginal_error.strides[0]] = static_cast<T>(err);
}

// Dense plan reductions in one pass over the matrix: rows in parallel, each row by the fused SIMD
// loop; column masses summed per thread, then over the threads in a fixed order.
template <typename T>
void plan_one_dense(const SinkhornPlanParams& p, int64_t b) {
  const SinkhornProblem& pr = p.problem;
  const int64_t n = pr.rows(), m = pr.cols();
  const auto C = bind<T, true>(pr, b);
  std::vector<double> f, g, log_a, log_b;
  load_row<T>(p.f, b, f);
  load_row<T>(p.g, b, g);
  load_row<T>(pr.log_a, b, log_a);
  load_row<T>(pr.log_b, b, log_b);
  const double inv_eps = 1.0 / p.eps;
  const bool parallel = n * m > 16384;
#if defined(FLOWFAST_WITH_OPENMP)
  const int threads = parallel ? omp_get_max_threads() : 1;
#else
  const int threads = 1;
#endif
  std::vector<double> col_partials(p.col_mass.data ? static_cast<size_t>(threads) * m : 0, 0.0);
  std::vector<double> row_costs(n);
#if defined(FLOWFAST_WITH_OPENMP)
#pragma omp parallel num_threads(threads) if (parallel)
#endif
  {
#if defined(FLOWFAST_WITH_OPENMP)
    const int thread = omp_get_thread_num();
#else
    const int thread = 0;
#endif
    double* cols = p.col_mass.data ? col_partials.data() + static_cast<size_t>(thread) * m : nullptr;
    std::vector<double> entries(p.plan.data ? m : 0);
#if defined(FLOWFAST_WITH_OPENMP)
#pragma omp for schedule(static)
#endif
    for (int64_t i = 0; i < n; ++i) {
      const cpu::PlanRow row = cpu::plan_row(C.cost + i * C.cost_row, f[i], log_a[i], g.data(), log_b.data(), m,
                                             inv_eps, cols, p.plan.data ? entries.data() : nullptr);
      row_costs[i] = row.cost;
      if (p.row_mass.data) {
        static_cast<T*>(p.row_mass.data)[b * p.row_mass.strides[0] + i * p.row_mass.strides[1]] =
            static_cast<T>(row.mass);
      }
      if (p.plan.data) {
        T* out = static_cast<T*>(p.plan.data) + b * p.plan.strides[0] + i * p.plan.strides[1];
        for (int64_t j = 0; j < m; ++j) out[j * p.plan.strides[2]] = static_cast<T>(entries[j]);
      }
    }
  }
  if (p.transport_cost.data) {
    double total = 0.0;
    for (int64_t i = 0; i < n; ++i) total += row_costs[i];
    static_cast<T*>(p.transport_cost.data)[b * p.transport_cost.strides[0]] = static_cast<T>(total);
  }
  if (p.col_mass.data) {
    for (int64_t j = 0; j < m; ++j) {
      double mass = 0.0;
      for (int t = 0; t < threads; ++t) mass += col_partials[static_cast<size_t>(t) * m + j];
      static_cast<T*>(p.col_mass.data)[b * p.col_mass.strides[0] + j * p.col_mass.strides[1]] = static_cast<T>(mass);
    }
  }
}

// Point clouds: rows in parallel for the row-side outputs, column blocks for the column side.
template <typename T>
void plan_one_clouds(const SinkhornPlanParams& p, int64_t b) {
  const SinkhornProblem& pr = p.problem;
  const int64_t n = pr.rows(), m = pr.cols(), d = pr.dim();
  const auto C = bind<T, false>(pr, b);
  std::vector<double> f, g, log_a, log_b;
  load_row<T>(p.f, b, f);
  load_row<T>(p.g, b, g);
  load_row<T>(pr.log_a, b, log_a);
  load_row<T>(pr.log_b, b, log_b);
  const double eps = p.eps;
  auto entry = [&](int64_t i, int64_t j, double c) { return std::exp(log_plan(f[i], g[j], c, eps, log_a[i], log_b[j])); };

  // Row-side outputs: rows in parallel.
  double total_cost = 0.0;
#if defined(FLOWFAST_WITH_OPENMP)
#pragma omp parallel for schedule(static) reduction(+ : total_cost) if (n * m > 16384)
#endif
  for (int64_t i = 0; i < n; ++i) {
    double mass = 0.0;
    std::vector<double> acc(p.plan_y.data ? d : 0, 0.0);
    for (int64_t j = 0; j < m; ++j) {
      const double c = C(i, j);
      const double pij = entry(i, j, c);
      mass += pij;
      total_cost += pij * c;
      if (p.plan.data) {
        static_cast<T*>(p.plan.data)[b * p.plan.strides[0] + i * p.plan.strides[1] + j * p.plan.strides[2]] =
            static_cast<T>(pij);
      }
      if (p.plan_y.data) {
        const T* yj = C.y + j * C.y_row;
        for (int64_t k = 0; k < d; ++k) acc[k] += pij * static_cast<double>(yj[k]);
      }
    }
    if (p.row_mass.data) {
      static_cast<T*>(p.row_mass.data)[b * p.row_mass.strides[0] + i * p.row_mass.strides[1]] = static_cast<T>(mass);
    }
    if (p.plan_y.data) {
      T* out = static_cast<T*>(p.plan_y.data) + b * p.plan_y.strides[0] + i * p.plan_y.strides[1];
      for (int64_t k = 0; k < d; ++k) out[k * p.plan_y.strides[2]] = static_cast<T>(acc[k]);
    }
  }
  if (p.transport_cost.data) {
    static_cast<T*>(p.transport_cost.data)[b * p.transport_cost.strides[0]] = static_cast<T>(total_cost);
  }

  // Column-side outputs: column blocks in parallel, streaming rows.
  if (p.col_mass.data || p.plan_t_x.data) {
#if defined(FLOWFAST_WITH_OPENMP)
#pragma omp parallel for schedule(dynamic, 1) if (n * m > 16384)
#endif
    for (int64_t j0 = 0; j0 < m; j0 += kColumnBlock) {
      const int64_t j1 = std::min(m, j0 + kColumnBlock);
      std::vector<double> mass(j1 - j0, 0.0), acc(p.plan_t_x.data ? (j1 - j0) * d : 0, 0.0);
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = j0; j < j1; ++j) {
          const double pij = entry(i, j, C(i, j));
          mass[j - j0] += pij;
          if (p.plan_t_x.data) {
            const T* xi = C.x + i * C.x_row;
            for (int64_t k = 0; k < d; ++k) acc[(j - j0) * d + k] += pij * static_cast<double>(xi[k]);
          }
        }
      }
      for (int64_t j = j0; j < j1; ++j) {
        if (p.col_mass.data) {
          static_cast<T*>(p.col_mass.data)[b * p.col_mass.strides[0] + j * p.col_mass.strides[1]] =
              static_cast<T>(mass[j - j0]);
        }
        if (p.plan_t_x.data) {
          T* out = static_cast<T*>(p.plan_t_x.data) + b * p.plan_t_x.strides[0] + j * p.plan_t_x.strides[1];
          for (int64_t k = 0; k < d; ++k) out[k * p.plan_t_x.strides[2]] = static_cast<T>(acc[(j - j0) * d + k]);
        }
      }
    }
  }
}

template <typename T, bool kDense>
void plan_one(const SinkhornPlanParams& p, int64_t b) {
  if constexpr (kDense) {
    plan_one_dense<T>(p, b);
  } else {
    plan_one_clouds<T>(p, b);
  }
}

template <typename T, bool kDense>
void sample_one(const SinkhornSampleParams& p, int64_t b) {
  const SinkhornProblem& pr = p.problem;
  const int64_t n = pr.rows(), m = pr.cols();
  const auto C = bind<T, kDense>(pr, b);
  std::vector<double> g, log_b;
  load_row<T>(p.g, b, g);
  load_row<T>(pr.log_b, b, log_b);
  int64_t* out = static_cast<int64_t*>(p.cols.data) + b * p.cols.strides[0];
#if defined(FLOWFAST_WITH_OPENMP)
#pragma omp parallel if (n * m > 16384)
#endif
  {
    std::vector<double> noise(m);
#if defined(FLOWFAST_WITH_OPENMP)
#pragma omp for schedule(dynamic, 1)
#endif
    for (int64_t i = 0; i < n; ++i) {
      cpu::gumbel_row(p.seed, p.offset, static_cast<uint64_t>(b * n + i) * static_cast<uint64_t>(m), m, noise.data());
      if constexpr (kDense) {
        out[i * p.cols.strides[1]] =
            cpu::gumbel_argmax(C.cost + i * C.cost_row, g.data(), log_b.data(), noise.data(), m, p.eps);
      } else {
        double best = -INFINITY;
        int64_t best_j = 0;
        for (int64_t j = 0; j < m; ++j) {
          const double score = (g[j] - C(i, j)) / p.eps + log_b[j] + noise[j];
          if (score > best) {
            best = score;
            best_j = j;
          }
        }
        out[i * p.cols.strides[1]] = best_j;
      }
    }
  }
}

// Runs body(scalar_tag, dense_tag, b) for every problem with the dtype and geometry resolved.
template <typename Params, typename Body>
void for_each_problem(const Params& p, DType dtype, Body&& body) {
  FF_DISPATCH_FLOATING(dtype, scalar_t, "sinkhorn", [&] {
    for (int64_t b = 0; b < p.problem.batch(); ++b) {
      if (p.problem.geometry == SinkhornGeometry::Dense) {
        body(scalar_t{}, std::true_type{}, b);
      } else {
        body(scalar_t{}, std::false_type{}, b);
      }
    }
  });
}

}  // namespace

void sinkhorn_solve_cpu(const SinkhornParams& p) {
  for_each_problem(p, p.f.dtype, [&](auto t, auto dense, int64_t b) { solve_one<decltype(t), dense.value>(p, b); });
}

void sinkhorn_plan_cpu(const SinkhornPlanParams& p) {
  for_each_problem(p, p.f.dtype, [&](auto t, auto dense, int64_t b) { plan_one<decltype(t), dense.value>(p, b); });
}

void sinkhorn_sample_cpu(const SinkhornSampleParams& p) {
  for_each_problem(p, p.g.dtype, [&](auto t, auto dense, int64_t b) { sample_one<decltype(t), dense.value>(p, b); });
}

}  // namespace ff
