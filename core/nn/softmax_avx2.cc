// AVX2/FMA softmax over rows (softmax.h); this file alone is compiled for
// AVX2/FMA and includes no torch headers.
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>

#include "core/nn/bf16_avx2.h"
#include "core/nn/exp_avx2.h"
#include "core/nn/softmax_kernels.h"

namespace internvl::softmax {
namespace {

using simd::ExpNonPositiveAvx2;

inline float HorizontalMax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

inline float HorizontalSum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// The last n % 8 elements as a vector, the rest `fill`.
inline __m256 LoadTail(const float* p, int64_t n, float fill) {
  alignas(32) float t[8];
  for (int i = 0; i < 8; ++i) t[i] = i < n ? p[i] : fill;
  return _mm256_load_ps(t);
}
inline void StoreTail(float* p, int64_t n, __m256 v) {
  alignas(32) float t[8];
  _mm256_store_ps(t, v);
  for (int64_t i = 0; i < n; ++i) p[i] = t[i];
}

inline float Bf16ToFloat(uint16_t v) {
  alignas(16) uint16_t in[8] = {v};
  return _mm256_cvtss_f32(simd::LoadBf16x8(in));
}
inline uint16_t FloatToBf16(float v) {
  alignas(16) uint16_t out[8];
  simd::StoreBf16x8(out, _mm256_set1_ps(v));
  return out[0];
}

void SoftmaxRow(float* x, int64_t n) {
  const float neg_inf = -std::numeric_limits<float>::infinity();
  // Maximum, and whether any element is NaN (max_ps does not keep NaN).
  __m256 m0 = _mm256_set1_ps(neg_inf), m1 = m0;
  __m256 nan = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256 a = _mm256_loadu_ps(x + i), b = _mm256_loadu_ps(x + i + 8);
    m0 = _mm256_max_ps(m0, a);
    m1 = _mm256_max_ps(m1, b);
    nan = _mm256_or_ps(nan, _mm256_or_ps(_mm256_cmp_ps(a, a, _CMP_UNORD_Q), _mm256_cmp_ps(b, b, _CMP_UNORD_Q)));
  }
  for (; i + 8 <= n; i += 8) {
    const __m256 a = _mm256_loadu_ps(x + i);
    m0 = _mm256_max_ps(m0, a);
    nan = _mm256_or_ps(nan, _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
  }
  if (i < n) {
    const __m256 a = LoadTail(x + i, n - i, neg_inf);
    m0 = _mm256_max_ps(m0, a);
    nan = _mm256_or_ps(nan, _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
  }
  const float max = HorizontalMax(_mm256_max_ps(m0, m1));
  if (_mm256_movemask_ps(nan) != 0 || !std::isfinite(max)) {
    // As the reference: a NaN, an infinite maximum or a row all -inf make
    // every output NaN (x - max or the sum is NaN there).
    for (int64_t j = 0; j < n; ++j) x[j] = std::numeric_limits<float>::quiet_NaN();
    return;
  }
  const __m256 mv = _mm256_set1_ps(max);
  __m256 s0 = _mm256_setzero_ps(), s1 = s0;
  for (i = 0; i + 16 <= n; i += 16) {
    const __m256 a = ExpNonPositiveAvx2(_mm256_sub_ps(_mm256_loadu_ps(x + i), mv));
    const __m256 b = ExpNonPositiveAvx2(_mm256_sub_ps(_mm256_loadu_ps(x + i + 8), mv));
    _mm256_storeu_ps(x + i, a);
    _mm256_storeu_ps(x + i + 8, b);
    s0 = _mm256_add_ps(s0, a);
    s1 = _mm256_add_ps(s1, b);
  }
  for (; i + 8 <= n; i += 8) {
    const __m256 a = ExpNonPositiveAvx2(_mm256_sub_ps(_mm256_loadu_ps(x + i), mv));
    _mm256_storeu_ps(x + i, a);
    s0 = _mm256_add_ps(s0, a);
  }
  if (i < n) {
    const __m256 a = ExpNonPositiveAvx2(_mm256_sub_ps(LoadTail(x + i, n - i, neg_inf), mv));
    StoreTail(x + i, n - i, a);
    s0 = _mm256_add_ps(s0, a);
  }
  const __m256 inv = _mm256_set1_ps(1.0f / HorizontalSum(_mm256_add_ps(s0, s1)));
  for (i = 0; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), inv));
  if (i < n) StoreTail(x + i, n - i, _mm256_mul_ps(LoadTail(x + i, n - i, 0.0f), inv));
}

}  // namespace

void SoftmaxRowsAvx2(float* x, int64_t rows, int64_t n) {
  for (int64_t r = 0; r < rows; ++r) SoftmaxRow(x + r * n, n);
}

void SoftmaxRowsBf16Avx2(uint16_t* x, int64_t rows, int64_t n) {
  // Each row widened into one fp32 row, computed as above, rounded back.
  const std::unique_ptr<float[]> row(new float[n]);
  float* f = row.get();
  for (int64_t r = 0; r < rows; ++r, x += n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(f + i, simd::LoadBf16x8(x + i));
    for (; i < n; ++i) f[i] = Bf16ToFloat(x[i]);
    SoftmaxRow(f, n);
    for (i = 0; i + 8 <= n; i += 8) simd::StoreBf16x8(x + i, _mm256_loadu_ps(f + i));
    for (; i < n; ++i) x[i] = FloatToBf16(f[i]);
  }
}

}  // namespace internvl::softmax
