// AVX2/FMA SwiGLU over bf16 rows (activation_kernels.h); this file alone is
// compiled for AVX2/FMA and includes no torch headers.
#include <immintrin.h>

#include <cstdint>

#include "core/nn/activation_kernels.h"
#include "core/nn/bf16_avx2.h"
#include "core/nn/exp_avx2.h"

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

// The product, each step rounded to bf16 (via the store) as the ops round.
inline void Step(const uint16_t* g, const uint16_t* u, uint16_t* o) {
  alignas(16) uint16_t s[8];
  simd::StoreBf16x8(s, Silu(simd::LoadBf16x8(g)));
  simd::StoreBf16x8(o, _mm256_mul_ps(simd::LoadBf16x8(s), simd::LoadBf16x8(u)));
}

}  // namespace

void SwiGluRowsBf16Avx2(const uint16_t* gate, const uint16_t* up, int64_t stride, uint16_t* out, int64_t rows,
                        int64_t n) {
  for (int64_t r = 0; r < rows; ++r, gate += stride, up += stride, out += n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) Step(gate + i, up + i, out + i);
    if (i < n) {
      alignas(16) uint16_t g[8] = {}, u[8] = {}, o[8];
      for (int64_t j = i; j < n; ++j) g[j - i] = gate[j], u[j - i] = up[j];
      Step(g, u, o);
      for (int64_t j = i; j < n; ++j) out[j] = o[j - i];
    }
  }
}

}  // namespace internvl::act
