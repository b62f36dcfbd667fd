// Portable 16-bit float storage types for the CPU kernels (CUDA files use __half and
// __nv_bfloat16 instead). Only storage: kernels convert to double to compute, and round back to
// nearest-even when storing, so results match a double reference rounded to the same dtype.
#pragma once

#include <cstdint>
#include <cstring>

namespace ff {

namespace detail {
inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}
inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}
}  // namespace detail

/// bfloat16: the top 16 bits of a float32.
struct BFloat16 {
  uint16_t bits;
  BFloat16() = default;
  BFloat16(double value) {  // NOLINT(google-explicit-constructor): used like a numeric type
    const float f = static_cast<float>(value);
    uint32_t u = detail::float_bits(f);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) {
      bits = 0x7FC0;  // NaN stays NaN
      return;
    }
    u += 0x7FFFu + ((u >> 16) & 1u);  // round to nearest even
    bits = static_cast<uint16_t>(u >> 16);
  }
  operator double() const { return detail::bits_float(static_cast<uint32_t>(bits) << 16); }
};

/// IEEE binary16.
struct Half {
  uint16_t bits;
  Half() = default;
  Half(double value) {  // NOLINT(google-explicit-constructor)
    const uint32_t u = detail::float_bits(static_cast<float>(value));
    const uint32_t sign = (u >> 16) & 0x8000u;
    const uint32_t abs = u & 0x7FFFFFFFu;
    if (abs > 0x7F800000u) {
      bits = static_cast<uint16_t>(sign | 0x7E00u);  // NaN
    } else if (abs >= 0x477FF000u) {
      bits = static_cast<uint16_t>(sign | 0x7C00u);  // rounds to >= 65520: infinity
    } else if (abs < 0x38800000u) {
      // Subnormal half (or zero): value = abs_float * 2^24 rounded to an integer, nearest even.
      const float scaled = detail::bits_float(abs) * 16777216.0f;
      uint32_t q = static_cast<uint32_t>(scaled);
      const float rest = scaled - static_cast<float>(q);
      if (rest > 0.5f || (rest == 0.5f && (q & 1u))) ++q;
      bits = static_cast<uint16_t>(sign | q);
    } else {
      // Normal: rebias the exponent (127 -> 15) and round the 23-bit mantissa to 10 bits.
      uint32_t h = ((abs - 0x38000000u) >> 13);
      const uint32_t rest = abs & 0x1FFFu;
      if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
      bits = static_cast<uint16_t>(sign | h);
    }
  }
  operator double() const {
    const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
    const uint32_t exponent = (bits >> 10) & 0x1Fu;
    const uint32_t mantissa = bits & 0x3FFu;
    if (exponent == 0) {
      const float magnitude = static_cast<float>(mantissa) * (1.0f / 16777216.0f);  // 2^-24 units
      return sign ? -static_cast<double>(magnitude) : static_cast<double>(magnitude);
    }
    if (exponent == 31) return detail::bits_float(sign | 0x7F800000u | (mantissa << 13));
    return detail::bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
  }
};

}  // namespace ff
