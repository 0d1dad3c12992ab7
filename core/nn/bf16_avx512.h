// fp32 lanes to bf16 bits for the translation units compiled for AVX-512F
// (softmax_avx512.cc; core/llm's kernels through core/llm/simd_avx512.h):
// the 16-lane form of simd_avx2.h's RoundBf16x8.
#pragma once

#include <immintrin.h>

namespace internvl::simd {

// v rounded to bf16 to nearest even, NaN -> 0x7FC0 (FloatToBf16Bits,
// core/llm/bf16_bits.h, lane for lane; libtorch's scalar cast), as 16
// packed bf16 values.
inline __m256i RoundToBf16x16(__m512 v) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
  r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
  return _mm512_cvtepi32_epi16(r);
}

}  // namespace internvl::simd
