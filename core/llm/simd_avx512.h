// Helpers shared by the AVX-512 kernel files (gemv_avx512bf16.cc,
// quant_avx512vnni.cc). Include only from files compiled with -mavx512f.
#pragma once

#include <immintrin.h>

namespace internvl::llm::simd {

// Sum of the 16 lanes, in a fixed order (not _mm512_reduce_add_ps: GCC 12's
// header trips -Wmaybe-uninitialized in it).
inline float ReduceAdd(__m512 v) {
  alignas(64) float t[16];
  _mm512_store_ps(t, v);
  float s[8];
  for (int i = 0; i < 8; ++i) s[i] = t[i] + t[i + 8];
  return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
}

}  // namespace internvl::llm::simd
