// CPU twin of csrc/cuda/interpolant_cuda.cu: fused CFM path sampling and loss forward/backward,
// rows in parallel (OpenMP). float32/float64/float16/bfloat16 storage; computes in double.
#include "flowfast/half.h"
#include "flowfast/interpolant.h"

namespace ff {
namespace {

// Drawn noise along a row: each Box-Muller pair is computed once and serves elements 2p, 2p + 1.
template <typename T>
class NoiseCursor {
 public:
  explicit NoiseCursor(const InterpolantRows<T>& rows) : rows_(rows) {}
  double operator()(int64_t k) {
    if (rows_.eps) return static_cast<double>(rows_.eps[k]);
    if ((k >> 1) != pair_) {
      pair_ = k >> 1;
      typename InterpolantRows<T>::NoiseT a, b;
      standard_normal_pair(rows_.seed, rows_.offset, static_cast<uint64_t>(pair_), &a, &b);
      z_[0] = a;
      z_[1] = b;
    }
    return z_[k & 1];
  }

 private:
  const InterpolantRows<T>& rows_;
  int64_t pair_ = -1;
  double z_[2] = {0.0, 0.0};
};

template <typename T>
void sample(const InterpolantSampleParams& p) {
  const auto in = InterpolantRows<T>::from(p.in);
  T* xt = static_cast<T*>(p.xt.data);
  T* eps_out = static_cast<T*>(p.eps_out.data);
#if defined(FLOWFAST_WITH_OPENMP)
#pragma omp parallel for schedule(static) if (in.B * in.D > 65536)
#endif
  for (int64_t b = 0; b < in.B; ++b) {
    const PathCoeffs c = in.coeffs(b);
    NoiseCursor<T> noise(in);
    for (int64_t k = b * in.D; k < (b + 1) * in.D; ++k) {
      const double e = (c.c != 0.0 || eps_out) ? noise(k) : 0.0;  // sigma = 0: nothing to draw
      xt[k] = static_cast<T>(in.interpolate(c, k, e));
      if (eps_out) eps_out[k] = static_cast<T>(e);
    }
  }
}

template <typename T>
void loss_forward(const InterpolantLossParams& p) {
  const auto in = InterpolantRows<T>::from(p.in);
  const T* v = static_cast<const T*>(p.v.data);
  const T* weight = static_cast<const T*>(p.weight.data);
  T* per_sample = static_cast<T*>(p.per_sample.data);
#if defined(FLOWFAST_WITH_OPENMP)
#pragma omp parallel for schedule(static) if (in.B * in.D > 65536)
#endif
  for (int64_t b = 0; b < in.B; ++b) {
    const PathCoeffs c = in.coeffs(b);
    double acc = 0.0;
    NoiseCursor<T> noise(in);
    for (int64_t k = b * in.D; k < (b + 1) * in.D; ++k) {
      const double diff = static_cast<double>(v[k]) - in.target(c, k, c.dc != 0.0 ? noise(k) : 0.0);
      acc += diff * diff;
    }
    per_sample[b] = static_cast<T>((weight ? static_cast<double>(weight[b]) : 1.0) * acc);
  }
}

template <typename T>
void loss_backward(const InterpolantLossParams& p) {
  const auto in = InterpolantRows<T>::from(p.in);
  const T* v = static_cast<const T*>(p.v.data);
  const T* weight = static_cast<const T*>(p.weight.data);
  const T* grad = static_cast<const T*>(p.grad.data);
  T* grad_v = static_cast<T*>(p.grad_v.data);
#if defined(FLOWFAST_WITH_OPENMP)
#pragma omp parallel for schedule(static) if (in.B * in.D > 65536)
#endif
  for (int64_t b = 0; b < in.B; ++b) {
    const PathCoeffs c = in.coeffs(b);
    const double scale = 2.0 * static_cast<double>(grad[b]) * (weight ? static_cast<double>(weight[b]) : 1.0);
    NoiseCursor<T> noise(in);
    for (int64_t k = b * in.D; k < (b + 1) * in.D; ++k) {
      grad_v[k] = static_cast<T>(scale * (static_cast<double>(v[k]) - in.target(c, k, c.dc != 0.0 ? noise(k) : 0.0)));
    }
  }
}

}  // namespace

void interpolant_sample_cpu(const InterpolantSampleParams& p) {
  FF_DISPATCH_FLOATING_AND_HALF(p.in.x0.dtype, scalar_t, Half, BFloat16, "interpolant", [&] { sample<scalar_t>(p); });
}

void interpolant_loss_forward_cpu(const InterpolantLossParams& p) {
  FF_DISPATCH_FLOATING_AND_HALF(p.in.x0.dtype, scalar_t, Half, BFloat16, "interpolant", [&] { loss_forward<scalar_t>(p); });
}

void interpolant_loss_backward_cpu(const InterpolantLossParams& p) {
  FF_DISPATCH_FLOATING_AND_HALF(p.in.x0.dtype, scalar_t, Half, BFloat16, "interpolant", [&] { loss_backward<scalar_t>(p); });
}

}  // namespace ff
