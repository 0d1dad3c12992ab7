// AVX2/FMA LayerNorm over bf16 rows (norm_kernels.h); this file alone is
// compiled for AVX2/FMA and includes no torch headers.
#include <immintrin.h>

#include <cmath>
#include <cstdint>

#include "core/nn/norm_kernels.h"
#include "core/nn/simd_avx2.h"

namespace internvl::norm {
namespace {

using simd::HorizontalSum8;
using simd::LoadBf16Tail;
using simd::LoadBf16x8;

void LayerNormRow(const uint16_t* x, const uint16_t* w, const uint16_t* b, uint16_t* y, int64_t n, float eps) {
  const int64_t full = n / 8 * 8;
  // The mean, then the variance about it (two passes over a row in L1).
  __m256 s0 = _mm256_setzero_ps(), s1 = s0;
  int64_t i = 0;
  for (; i + 16 <= full; i += 16) {
    s0 = _mm256_add_ps(s0, LoadBf16x8(x + i));
    s1 = _mm256_add_ps(s1, LoadBf16x8(x + i + 8));
  }
  if (i < full) s0 = _mm256_add_ps(s0, LoadBf16x8(x + i));
  if (full < n) s1 = _mm256_add_ps(s1, LoadBf16Tail(x + full, n - full));
  const float mean = HorizontalSum8(_mm256_add_ps(s0, s1)) / static_cast<float>(n);
  const __m256 mv = _mm256_set1_ps(mean);
  __m256 v0 = _mm256_setzero_ps(), v1 = v0;
  for (i = 0; i + 16 <= full; i += 16) {
    const __m256 a = _mm256_sub_ps(LoadBf16x8(x + i), mv);
    const __m256 c = _mm256_sub_ps(LoadBf16x8(x + i + 8), mv);
    v0 = _mm256_fmadd_ps(a, a, v0);
    v1 = _mm256_fmadd_ps(c, c, v1);
  }
  if (i < full) {
    const __m256 a = _mm256_sub_ps(LoadBf16x8(x + i), mv);
    v0 = _mm256_fmadd_ps(a, a, v0);
  }
  float var = HorizontalSum8(_mm256_add_ps(v0, v1));
  for (int64_t j = full; j < n; ++j) {
    const float d = LoadBf16Tail(x + j, 1)[0] - mean;
    var += d * d;
  }
  var /= static_cast<float>(n);
  // As libtorch's CPU kernel: h = x * rstd + (-mean * rstd), then h * w + b,
  // each a separate rounding (no FMA).
  const float r = 1.0f / std::sqrt(var + eps);
  const __m256 rstd = _mm256_set1_ps(r), shift = _mm256_set1_ps(-mean * r);
  const auto normed = [&](__m256 xv, __m256 wv, __m256 bv) {
    return _mm256_add_ps(_mm256_mul_ps(_mm256_add_ps(_mm256_mul_ps(xv, rstd), shift), wv), bv);
  };
  for (i = 0; i < full; i += 8) {
    simd::StoreBf16x8(y + i, normed(LoadBf16x8(x + i), LoadBf16x8(w + i), LoadBf16x8(b + i)));
  }
  if (full < n) {
    const int64_t t = n - full;
    simd::StoreBf16Tail(y + full, t,
                        normed(LoadBf16Tail(x + full, t), LoadBf16Tail(w + full, t), LoadBf16Tail(b + full, t)));
  }
}

}  // namespace

void LayerNormRowsBf16Avx2(const uint16_t* x, const uint16_t* w, const uint16_t* b, uint16_t* y, int64_t rows,
                           int64_t n, float eps) {
  for (int64_t r = 0; r < rows; ++r) LayerNormRow(x + r * n, w, b, y + r * n, n, eps);
}

}  // namespace internvl::norm
