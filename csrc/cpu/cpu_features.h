// Run-time CPU feature probes shared by the CPU kernels: each SIMD path is compiled with a
// target attribute and chosen only where the running CPU has the instructions.
#pragma once

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define FF_CPU_X86_SIMD 1
#endif

namespace ff {
namespace cpu {

#if defined(FF_CPU_X86_SIMD)
inline bool has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
}

inline bool has_popcnt() {
  static const bool has = __builtin_cpu_supports("popcnt");
  return has;
}

inline bool has_avx2_fma() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}
#endif

}  // namespace cpu
}  // namespace ff
