// fp32 lanes to bf16 bits and back for the translation units compiled for
// AVX-512F (softmax_avx512.cc, activation_avx512.cc,
// attention_avx512bf16.cc; core/llm's kernels through
// core/llm/simd_avx512.h): the 16-lane forms of simd_avx2.h's RoundBf16x8 and
// LoadBf16x8.
#pragma once

#include <immintrin.h>

#include <cstdint>

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

// 16 bf16 values (raw bits) widened to fp32 (exactly).
inline __m512 WidenBf16x16(__m256i bits) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}

// Up to 16 bf16 values at p (lanes m; the others 0) widened to fp32.
inline __m512 LoadBf16x16(const uint16_t* p, __mmask16 m) { return WidenBf16x16(_mm256_maskz_loadu_epi16(m, p)); }

}  // namespace internvl::simd
