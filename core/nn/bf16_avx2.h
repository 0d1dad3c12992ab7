// Eight bf16 values (raw bits) to and from fp32 lanes, for translation units
// compiled for AVX2 only (softmax_avx2.cc, norm_avx2.cc, core/llm/gemv_avx2.cc).
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace internvl::simd {

// Widened exactly (bf16 is the top half of an fp32).
inline __m256 LoadBf16x8(const uint16_t* p) {
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
}

// Rounded to nearest even, NaN -> 0x7FC0: libtorch's cast to kBFloat16 (and
// FloatToBf16Bits, core/llm/bf16_bits.h) bit for bit.
inline void StoreBf16x8(uint16_t* p, __m256 v) {
  const __m256i bits = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(bits, _mm256_set1_epi32(0x7FFF)), lsb), 16);
  r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC0), _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
  // Each lane holds 0..0xFFFF: the unsigned saturating pack keeps it.
  const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), packed);
}

}  // namespace internvl::simd
