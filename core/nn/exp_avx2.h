// e^x over eight floats for softmax (x <= 0, the maximum subtracted), for
// translation units compiled for AVX2/FMA only (softmax_avx2.cc,
// core/llm/gemv_avx2.cc).
#pragma once

#include <immintrin.h>

#include "core/nn/exp_constants.h"

namespace internvl::simd {

// Cephes' expf polynomial (as avx_mathfun), within 2 ulp of expf; below
// -87.3 (where expf is subnormal or 0) exactly 0, so masked (-inf) scores
// weigh nothing.
inline __m256 ExpNonPositiveAvx2(__m256 x) {
  namespace c = exp_constants;
  const __m256 lowest = _mm256_set1_ps(c::kLowest);
  const __m256 keep = _mm256_cmp_ps(x, lowest, _CMP_GE_OQ);
  x = _mm256_max_ps(x, lowest);
  __m256 fx = _mm256_fmadd_ps(x, _mm256_set1_ps(c::kLog2e), _mm256_set1_ps(0.5f));
  fx = _mm256_floor_ps(fx);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(c::kLn2High), x);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(c::kLn2Low), x);
  const __m256 z = _mm256_mul_ps(x, x);
  __m256 y = _mm256_set1_ps(c::kPolynomial[0]);
#pragma GCC unroll 5
  for (int i = 1; i < 6; ++i) y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(c::kPolynomial[i]));
  y = _mm256_fmadd_ps(y, z, x);
  y = _mm256_add_ps(y, _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127)), 23);
  return _mm256_and_ps(_mm256_mul_ps(y, _mm256_castsi256_ps(e)), keep);
}

}  // namespace internvl::simd
