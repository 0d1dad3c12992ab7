// Small AVX2 helpers shared by the translation units compiled for AVX2
// (softmax_avx2.cc, norm_avx2.cc, activation_avx2.cc, core/llm/gemv_avx2.cc;
// the AVX-512 kernel files through core/llm/simd_avx512.h):
// bf16 (raw bits) to and from fp32 lanes, whole and for a row's tail, and a
// horizontal sum.
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace internvl::simd {

// Eight bf16 values widened exactly (bf16 is the top half of an fp32).
inline __m256 LoadBf16x8(const uint16_t* p) {
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
}

// v rounded to bf16 precision, as fp32 lanes (the low 16 bits zero): to
// nearest even, NaN -> 0x7FC0: libtorch's cast to kBFloat16 (and
// FloatToBf16Bits, core/llm/bf16_bits.h) bit for bit.
inline __m256 RoundBf16x8(__m256 v) {
  const __m256i bits = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_and_si256(_mm256_add_epi32(_mm256_add_epi32(bits, _mm256_set1_epi32(0x7FFF)), lsb),
                               _mm256_set1_epi32(static_cast<int>(0xFFFF0000u)));
  r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC00000), _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
  return _mm256_castsi256_ps(r);
}

// Eight values rounded as RoundBf16x8, stored as bf16 bits.
inline void StoreBf16x8(uint16_t* p, __m256 v) {
  const __m256i r = _mm256_srli_epi32(_mm256_castps_si256(RoundBf16x8(v)), 16);
  // Each lane holds 0..0xFFFF: the unsigned saturating pack keeps it.
  const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), packed);
}

// The first n (< 8) values at p widened, the other lanes 0; and the first n
// lanes of v stored as bf16 (a row's tail, through a buffer).
inline __m256 LoadBf16Tail(const uint16_t* p, int64_t n) {
  alignas(16) uint16_t t[8] = {};
  for (int64_t i = 0; i < n; ++i) t[i] = p[i];
  return LoadBf16x8(t);
}
inline void StoreBf16Tail(uint16_t* p, int64_t n, __m256 v) {
  alignas(16) uint16_t t[8];
  StoreBf16x8(t, v);
  for (int64_t i = 0; i < n; ++i) p[i] = t[i];
}

// The sum of the eight lanes.
inline float HorizontalSum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

}  // namespace internvl::simd
