// CPU twin of csrc/cuda/interpolant_cuda.cu: fused CFM path sampling and loss forward/backward,
// rows in parallel (OpenMP). float32/float64/float16/bfloat16 storage; computes in double.
//
// Each row is walked in blocks of kBlock elements: a block's drawn noise is generated in one
// batched call (cpu/simd_normal.h, eight Philox pairs per AVX2 step) into a stack buffer, and the
// element loops below are then plain streaming loops the compiler vectorizes.
#include <algorithm>
#include <vector>

#include "cpu/simd_normal.h"
#include "flowfast/half.h"
#include "flowfast/interpolant.h"

namespace ff {
namespace {

constexpr int64_t kBlock = 1024;  // elements per noise block (4-8 KiB of normals: stays in L1)

// The noise of one block of elements [k0, k0 + n): read from the given noise, drawn into the buffer,
// or absent (its coefficient is 0, so nothing is drawn).
template <typename T>
class BlockNoise {
 public:
  using NoiseT = typename InterpolantRows<T>::NoiseT;

  explicit BlockNoise(const InterpolantRows<T>& rows) : rows_(rows) {}

  /// Drawn normals of elements k0 .. k0 + n - 1, indexed from 0.
  const NoiseT* draw(int64_t k0, int64_t n) {
    const int64_t first_pair = k0 >> 1, last_pair = (k0 + n - 1) >> 1;
    cpu::standard_normal_pairs(rows_.seed, rows_.offset, static_cast<uint64_t>(first_pair),
                               last_pair - first_pair + 1, buffer_);
    return buffer_ + (k0 & 1);
  }

 private:
  const InterpolantRows<T>& rows_;
  NoiseT buffer_[kBlock + 2];
};

// Runs body(b, c, k0, n, e) over every block of elements [k0, k0 + n) of row b, rows in parallel,
// where c are row b's path coefficients and e the block's noise (indexed from 0): a pointer to T
// (given noise), to NoiseT (drawn), or nullptr where needs_noise(c) is false. Short rows are grouped
// so one batched draw serves up to kBlock elements of several rows; long rows are cut into blocks
// of kBlock. Every row is handled by one thread, so per-row accumulation needs no atomics.
template <typename T, typename NeedsNoise, typename Body>
void for_each_block(const InterpolantRows<T>& in, NeedsNoise&& needs_noise, Body&& body) {
  const int64_t rows_per_group = std::max<int64_t>(1, kBlock / std::max<int64_t>(in.D, 1));
  const int64_t groups = (in.B + rows_per_group - 1) / rows_per_group;
  // Dynamic chunks of ~4K elements: with another process on a core, the thread sharing it takes
  // fewer chunks instead of holding up the loop's end (static halves made 2 threads 1.4x slower
  // than 1 there).
#if defined(FLOWFAST_WITH_OPENMP)
#pragma omp parallel for schedule(dynamic, 4) if (in.B * in.D > 65536)
#endif
  for (int64_t g = 0; g < groups; ++g) {
    BlockNoise<T> noise(in);
    const int64_t r0 = g * rows_per_group, r1 = std::min(in.B, r0 + rows_per_group);
    const typename BlockNoise<T>::NoiseT* group_noise = nullptr;  // the whole group's draw (short rows)
    for (int64_t b = r0; b < r1; ++b) {
      const PathCoeffs c = in.coeffs(b);
      const bool needed = needs_noise(c);
      for (int64_t k0 = b * in.D; k0 < (b + 1) * in.D; k0 += kBlock) {
        const int64_t n = std::min(kBlock, (b + 1) * in.D - k0);
        if (!needed) {
          body(b, c, k0, n, static_cast<const T*>(nullptr));
        } else if (in.noise) {
          body(b, c, k0, n, in.noise + k0);
        } else if (rows_per_group > 1) {
          if (!group_noise) group_noise = noise.draw(r0 * in.D, (r1 - r0) * in.D);
          body(b, c, k0, n, group_noise + (k0 - r0 * in.D));
        } else {
          body(b, c, k0, n, noise.draw(k0, n));
        }
      }
    }
  }
}

template <typename N>
inline double noise_at(const N* e, int64_t i) {
  return e ? static_cast<double>(e[i]) : 0.0;
}

template <typename T>
void sample(const InterpolantSampleParams& p) {
  const auto in = InterpolantRows<T>::from(p.in);
  T* xt = static_cast<T*>(p.xt.data);
  T* noise_out = static_cast<T*>(p.noise_out.data);
  for_each_block(
      in, [&](const PathCoeffs& c) { return c.c != 0.0 || noise_out; },  // sigma = 0: nothing to draw
      [&](int64_t, const PathCoeffs& c, int64_t k0, int64_t n, const auto* e) {
        for (int64_t i = 0; i < n; ++i) {
          const double z = noise_at(e, i);
          xt[k0 + i] = static_cast<T>(in.interpolate(c, k0 + i, z));
          if (noise_out) noise_out[k0 + i] = static_cast<T>(z);
        }
      });
}

template <typename T>
void loss_forward(const InterpolantLossParams& p) {
  const auto in = InterpolantRows<T>::from(p.in);
  const T* v = static_cast<const T*>(p.v.data);
  const T* weight = static_cast<const T*>(p.weight.data);
  T* per_sample = static_cast<T*>(p.per_sample.data);
  T* grad_v = static_cast<T*>(p.grad_v.data);  // optional: the mean loss's gradient, same pass
  std::vector<double> row_sum(static_cast<size_t>(in.B), 0.0);
  for_each_block(
      in, [](const PathCoeffs& c) { return c.dc != 0.0; },
      [&](int64_t b, const PathCoeffs& c, int64_t k0, int64_t n, const auto* e) {
        const double scale = 2.0 * p.grad_scale * (weight ? static_cast<double>(weight[b]) : 1.0);
        double block = 0.0;
        for (int64_t i = 0; i < n; ++i) {
          const double diff = static_cast<double>(v[k0 + i]) - in.target(c, k0 + i, noise_at(e, i));
          block += diff * diff;
          if (grad_v) grad_v[k0 + i] = static_cast<T>(scale * diff);
        }
        row_sum[static_cast<size_t>(b)] += block;
      });
  double total = 0.0;
  for (int64_t b = 0; b < in.B; ++b) {
    per_sample[b] = static_cast<T>((weight ? static_cast<double>(weight[b]) : 1.0) * row_sum[static_cast<size_t>(b)]);
    total += static_cast<double>(per_sample[b]);
  }
  if (p.mean.data) *static_cast<T*>(p.mean.data) = static_cast<T>(total / static_cast<double>(in.B * in.D));
}

template <typename T>
void loss_backward(const InterpolantLossParams& p) {
  const auto in = InterpolantRows<T>::from(p.in);
  const T* v = static_cast<const T*>(p.v.data);
  const T* weight = static_cast<const T*>(p.weight.data);
  const T* grad = static_cast<const T*>(p.grad.data);
  T* grad_v = static_cast<T*>(p.grad_v.data);
  for_each_block(
      in, [](const PathCoeffs& c) { return c.dc != 0.0; },
      [&](int64_t b, const PathCoeffs& c, int64_t k0, int64_t n, const auto* e) {
        const double scale = 2.0 * static_cast<double>(grad[b]) * (weight ? static_cast<double>(weight[b]) : 1.0);
        for (int64_t i = 0; i < n; ++i)
          grad_v[k0 + i] =
              static_cast<T>(scale * (static_cast<double>(v[k0 + i]) - in.target(c, k0 + i, noise_at(e, i))));
      });
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
