// AVX-512 SwiGLU over bf16 rows (activation_kernels.h): activation_avx2.cc's
// operations in 16 lanes, the same bits. This file alone is compiled for
// AVX-512F/BW/VL and FMA and includes no torch headers.
// GCC 12's AVX-512 headers leave lanes undefined on purpose in conversions,
// which -W(maybe-)uninitialized reports inside them.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <cstdint>

#include "core/nn/activation_kernels.h"
#include "core/nn/bf16_avx512.h"
#include "core/nn/exp_avx512.h"

namespace internvl::act {
namespace {

inline __mmask16 Lanes(int64_t n) { return n >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << n) - 1); }

// silu(x) as activation_avx2.cc's Silu: e^-|x| only; where x's sign bit is
// set, x e^x / (1 + e^x).
inline __m512 Silu(__m512 x) {
  const __m512i sign = _mm512_set1_epi32(static_cast<int>(0x80000000u));
  const __m512 t = simd::ExpNonPositiveAvx512(_mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(x), sign)));
  const __mmask16 negative = _mm512_test_epi32_mask(_mm512_castps_si512(x), sign);
  const __m512 num = _mm512_mask_mul_ps(x, negative, x, t);
  return _mm512_div_ps(num, _mm512_add_ps(_mm512_set1_ps(1.0f), t));
}

// bf16(bf16(silu(g)) * u), rounded, for lanes m.
inline void SwiGlu16(const uint16_t* gate, const uint16_t* up, uint16_t* out, __mmask16 m) {
  const __m512 silu = simd::WidenBf16x16(simd::RoundToBf16x16(Silu(simd::LoadBf16x16(gate, m))));
  _mm256_mask_storeu_epi16(out, m, simd::RoundToBf16x16(_mm512_mul_ps(silu, simd::LoadBf16x16(up, m))));
}

}  // namespace

void SwiGluRowsBf16Avx512(const uint16_t* gate, const uint16_t* up, int64_t stride, uint16_t* out, int64_t rows,
                          int64_t n) {
  for (int64_t r = 0; r < rows; ++r, gate += stride, up += stride, out += n) {
    for (int64_t i = 0; i < n; i += 16) SwiGlu16(gate + i, up + i, out + i, Lanes(n - i));
  }
}

}  // namespace internvl::act
