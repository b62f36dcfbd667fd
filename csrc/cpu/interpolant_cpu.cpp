// CPU twin of csrc/cuda/interpolant_cuda.cu: fused CFM path sampling and loss forward/backward,
// rows in parallel (OpenMP). float32/float64/float16/bfloat16 storage; computes in double.
#include "flowfast/half.h"
#include "flowfast/interpolant.h"

namespace ff {
namespace {

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
    for (int64_t k = b * in.D; k < (b + 1) * in.D; ++k) {
      const double e = in.noise(k);
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
    for (int64_t k = b * in.D; k < (b + 1) * in.D; ++k) {
      const double diff = static_cast<double>(v[k]) - in.target(c, k, in.noise(k));
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
    for (int64_t k = b * in.D; k < (b + 1) * in.D; ++k) {
      grad_v[k] = static_cast<T>(scale * (static_cast<double>(v[k]) - in.target(c, k, in.noise(k))));
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
