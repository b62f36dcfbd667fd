// Sinkhorn half-steps in kernel space with absorption (Schmitzer's stabilized scaling), for a
// dense cost on the CPU: the same iterates as the log-domain passes, evaluated as matrix-vector
// products instead of one exp per entry.
//
// K_ij = exp((F_i + G_j - C_ij)/eps_K + log a_i + log b_j) is the plan at base potentials (F, G);
// with u_i = exp((f_i - F_i)/eps) and v_j = exp((g_j - G_j)/eps),
//   LSE_i((f_i - C_ij)/eps + log a_i) = log sum_i K_ij u_i - G_j/eps - log b_j   (g-side),
//   LSE_j((g_j - C_ij)/eps + log b_j) = log sum_j K_ij v_j - F_i/eps - log a_i   (f-side).
// The potentials are absorbed into (F, G) and K rebuilt (one exp per entry) whenever eps changes
// or a scaling would leave [e^-30, e^30]; so K's significant entries stay in range and the sums
// stay exact to K's dtype (float32 data: K in float, 6e-8 relative; float64: double). A sum that
// still underflows (the plan lost a whole row or column to the flush) is refused: the caller runs
// that half-step in the log domain, and K is rebuilt next time.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <vector>

#include "cpu/sinkhorn_lse.h"

namespace ff {
namespace cpu {

template <typename T>
class KernelSpaceSinkhorn {
 public:
  // Above this many entries K is not formed (it would double the cost's memory): log domain only.
  static constexpr int64_t kMaxEntries = int64_t{1} << 24;

  KernelSpaceSinkhorn(const T* cost, int64_t cost_row, int64_t n, int64_t m, const double* log_a, const double* log_b)
      : cost_(cost), cost_row_(cost_row), n_(n), m_(m), log_a_(log_a), log_b_(log_b), scale_(std::max(n, m)) {}

  /// g-side: lse_j for the current f (g: the current column potential, absorbed with f).
  bool columns(const double* f, const double* g, double eps, double* lse) {
    if (!prepare(f, g, eps, f, n_, F_)) return false;
    for (int64_t i = 0; i < n_; ++i) scale_[i] = std::exp((f[i] - F_[i]) / eps);
    const double* u = scale_.data();
    // K^T u row-major (K streamed in order, the accumulators of one row band in cache): a fixed
    // number of row bands, whatever the thread count, each summed into its own partials, the
    // partials then summed in band order, so the result does not depend on the threads.
    const int64_t bands = std::min<int64_t>(kBands, n_);
    partials_.assign(static_cast<size_t>(bands) * m_, 0.0);
#if defined(FLOWFAST_WITH_OPENMP)
#pragma omp parallel for schedule(dynamic, 1) if (n_ * m_ > 16384)
#endif
    for (int64_t band = 0; band < bands; ++band) {
      double* acc = partials_.data() + band * m_;
      for (int64_t i = band * n_ / bands; i < (band + 1) * n_ / bands; ++i) axpy(row(i), u[i], acc, m_);
    }
    bool ok = true;
    for (int64_t j = 0; j < m_; ++j) {
      double total = 0.0;
      for (int64_t band = 0; band < bands; ++band) total += partials_[band * m_ + j];
      ok = ok && usable(total);
      lse[j] = std::log(total) - G_[j] / eps - log_b_[j];
    }
    return settle(ok);
  }

  /// f-side: lse_i for the current g (f: the current row potential, absorbed with g).
  bool rows(const double* g, const double* f, double eps, double* lse) {
    if (!prepare(f, g, eps, g, m_, G_)) return false;
    for (int64_t j = 0; j < m_; ++j) scale_[j] = std::exp((g[j] - G_[j]) / eps);
    const double* v = scale_.data();
    bool ok = true;
#if defined(FLOWFAST_WITH_OPENMP)
#pragma omp parallel for schedule(dynamic, 16) reduction(&& : ok) if (n_ * m_ > 16384)
#endif
    for (int64_t i = 0; i < n_; ++i) {
      const double s = dot(row(i), v, m_);
      ok = ok && usable(s);
      lse[i] = std::log(s) - F_[i] / eps - log_a_[i];
    }
    return settle(ok);
  }

 private:
  static constexpr int64_t kBands = 8;  // row bands of the g-side's partial sums
  static constexpr double kAbsorbAt = 30.0;   // |potential - base| / eps that triggers absorption
  static constexpr double kSmallest = 1e-290;  // a sum below this lost its row or column
  // K entries at or past this were clamped by the exp (float32 data: e^87 = 6e37; float64: e^708).
  static constexpr double kLargest = sizeof(T) >= 8 ? 1e300 : 1e37;
  static constexpr int kCooldown = 2;

  static bool usable(double s) { return s > kSmallest && s < INFINITY; }

  const T* row(int64_t i) const { return kernel_.get() + i * m_; }

  // Whether K serves this half-step: built, at this eps, and the scaling of `moving` (f or g, of
  // `size` entries, against its base) within range, else absorbs (f, g) and rebuilds. After a
  // refusal the next kCooldown half-steps run in the log domain (the potentials far from this
  // eps's fixed point, e.g. right after a compressed eps schedule's jump, overflow K).
  bool prepare(const double* f, const double* g, double eps, const double* moving, int64_t size,
               const std::vector<double>& base) {
    if (cooldown_ > 0) {
      --cooldown_;
      return false;
    }
    bool fresh = built_ && eps == eps_;
    for (int64_t k = 0; fresh && k < size; ++k) fresh = std::fabs(moving[k] - base[k]) <= kAbsorbAt * eps;
    return fresh || settle(rebuild(f, g, eps));
  }

  bool settle(bool ok) {
    if (!ok) {
      built_ = false;
      cooldown_ = kCooldown;
    }
    return ok;
  }

  // K at (f, g, eps); false if an entry passed what the exp represents (the plan overflows there).
  bool rebuild(const double* f, const double* g, double eps) {
    F_.assign(f, f + n_);
    G_.assign(g, g + m_);
    eps_ = eps;
    if (!kernel_) kernel_.reset(new T[static_cast<size_t>(n_) * m_]);
    const double inv_eps = 1.0 / eps;
    double largest = 0.0;
#if defined(FLOWFAST_WITH_OPENMP)
#pragma omp parallel reduction(max : largest) if (n_ * m_ > 16384)
#endif
    {
      std::vector<double> entries(m_);
#if defined(FLOWFAST_WITH_OPENMP)
#pragma omp for schedule(dynamic, 16)
#endif
      for (int64_t i = 0; i < n_; ++i) {
        plan_row(cost_ + i * cost_row_, F_[i], log_a_[i], G_.data(), log_b_, m_, inv_eps, nullptr, entries.data());
        T* out = kernel_.get() + i * m_;
        for (int64_t j = 0; j < m_; ++j) {
          largest = std::max(largest, entries[j]);
          out[j] = static_cast<T>(entries[j]);
        }
      }
    }
    built_ = largest < kLargest;
    return built_;
  }

  const T* cost_;
  int64_t cost_row_, n_, m_;
  const double* log_a_;
  const double* log_b_;
  std::unique_ptr<T[]> kernel_;
  std::vector<double> F_, G_, scale_, partials_;
  double eps_ = 0.0;
  bool built_ = false;
  int cooldown_ = 0;
};

}  // namespace cpu
}  // namespace ff
