// e^x over sixteen floats for softmax (x <= 0, the maximum subtracted), for
// translation units compiled for AVX-512F (softmax_avx512.cc,
// core/llm/gemv_avx512bf16.cc).
#pragma once

#include <immintrin.h>

#include "core/nn/exp_constants.h"

namespace internvl::simd {

// e^x for x <= 0 (softmax after the max is subtracted): the same operations
// and constants as core/nn/exp_avx2.h's ExpNonPositiveAvx2 lane for lane, so
// the same bits (within 2 ulp of expf; exactly 0 below -87.3).
inline __m512 ExpNonPositiveAvx512(__m512 x) {
  namespace c = exp_constants;
  const __m512 lowest = _mm512_set1_ps(c::kLowest);
  const __mmask16 keep = _mm512_cmp_ps_mask(x, lowest, _CMP_GE_OQ);
  x = _mm512_max_ps(x, lowest);
  __m512 fx = _mm512_fmadd_ps(x, _mm512_set1_ps(c::kLog2e), _mm512_set1_ps(0.5f));
  fx = _mm512_roundscale_ps(fx, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  x = _mm512_fnmadd_ps(fx, _mm512_set1_ps(c::kLn2High), x);
  x = _mm512_fnmadd_ps(fx, _mm512_set1_ps(c::kLn2Low), x);
  const __m512 z = _mm512_mul_ps(x, x);
  __m512 y = _mm512_set1_ps(c::kPolynomial[0]);
#pragma GCC unroll 5
  for (int i = 1; i < 6; ++i) y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(c::kPolynomial[i]));
  y = _mm512_fmadd_ps(y, z, x);
  y = _mm512_add_ps(y, _mm512_set1_ps(1.0f));
  const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvttps_epi32(fx), _mm512_set1_epi32(127)), 23);
  return _mm512_maskz_mul_ps(keep, y, _mm512_castsi512_ps(e));
}

}  // namespace internvl::simd
