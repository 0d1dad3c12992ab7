// e^x over sixteen floats for softmax (x <= 0, the maximum subtracted), for
// translation units compiled for AVX-512F (softmax_avx512.cc,
// core/llm/gemv_avx512bf16.cc).
#pragma once

#include <immintrin.h>

#include <cstdint>

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

// e[i] = e^(x_i - max) for the n values `load(i, m)` gives (16 from i, lanes
// m), returning their sum in the order both AVX-512 softmax kernels use
// (softmax_avx512.cc, attention_avx512bf16.cc): 32 values a step into two
// accumulators, the tail 16 at a time into the first, the two added, then
// reduced. Lanes past n are neither stored nor summed. *nan gains the lanes
// where a loaded value was NaN. e may be where the values are loaded from.
template <typename Load>
inline float ExpSumAvx512(Load load, int64_t n, float max, float* e, __mmask16* nan) {
  const __m512 mv = _mm512_set1_ps(max);
  __m512 s0 = _mm512_setzero_ps(), s1 = s0;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512 x0 = load(i, __mmask16(0xFFFF)), x1 = load(i + 16, __mmask16(0xFFFF));
    *nan |= _mm512_cmp_ps_mask(x0, x1, _CMP_UNORD_Q);
    const __m512 a = ExpNonPositiveAvx512(_mm512_sub_ps(x0, mv));
    const __m512 b = ExpNonPositiveAvx512(_mm512_sub_ps(x1, mv));
    _mm512_storeu_ps(e + i, a);
    _mm512_storeu_ps(e + i + 16, b);
    s0 = _mm512_add_ps(s0, a);
    s1 = _mm512_add_ps(s1, b);
  }
  for (; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m512 x0 = load(i, m);
    *nan |= _mm512_mask_cmp_ps_mask(m, x0, x0, _CMP_UNORD_Q);
    const __m512 a = _mm512_maskz_mov_ps(m, ExpNonPositiveAvx512(_mm512_sub_ps(x0, mv)));
    _mm512_mask_storeu_ps(e + i, m, a);
    s0 = _mm512_add_ps(s0, a);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

}  // namespace internvl::simd
