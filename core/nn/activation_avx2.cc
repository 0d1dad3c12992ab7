// AVX2/FMA SwiGLU over bf16 rows (activation_kernels.h); this file alone is
// compiled for AVX2/FMA and includes no torch headers.
#include <immintrin.h>

#include <cstdint>

#include "core/nn/activation_kernels.h"
#include "core/nn/exp_avx2.h"
#include "core/nn/simd_avx2.h"

namespace internvl::act {
namespace {

// silu(x) = x / (1 + e^-x), with e^-|x| only (never overflows): for x < 0,
// x e^x / (1 + e^x), the same value.
inline __m256 Silu(__m256 x) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256 t = simd::ExpNonPositiveAvx2(_mm256_or_ps(x, sign));  // e^-|x|
  const __m256 num = _mm256_blendv_ps(x, _mm256_mul_ps(x, t), x);    // x < 0: x e^x
  return _mm256_div_ps(num, _mm256_add_ps(_mm256_set1_ps(1.0f), t));
}

// bf16(bf16(silu(g)) * u), before the final rounding (the store's).
inline __m256 SwiGlu8(__m256 g, __m256 u) { return _mm256_mul_ps(simd::RoundBf16x8(Silu(g)), u); }

}  // namespace

void SwiGluRowsBf16Avx2(const uint16_t* gate, const uint16_t* up, int64_t stride, uint16_t* out, int64_t rows,
                        int64_t n) {
  for (int64_t r = 0; r < rows; ++r, gate += stride, up += stride, out += n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
      simd::StoreBf16x8(out + i, SwiGlu8(simd::LoadBf16x8(gate + i), simd::LoadBf16x8(up + i)));
    }
    if (i < n) {
      const int64_t t = n - i;
      simd::StoreBf16Tail(out + i, t, SwiGlu8(simd::LoadBf16Tail(gate + i, t), simd::LoadBf16Tail(up + i, t)));
    }
  }
}

}  // namespace internvl::act
