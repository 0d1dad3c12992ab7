// AVX2/FMA softmax over rows (softmax.h); this file alone is compiled for
// AVX2/FMA and includes no torch headers.
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>

#include "core/nn/exp_avx2.h"
#include "core/nn/simd_avx2.h"
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

// Eight fp32 or bf16 values as fp32.
inline __m256 Load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 Load8(const uint16_t* p) { return simd::LoadBf16x8(p); }
inline void Store8(float* p, __m256 v) { _mm256_storeu_ps(p, v); }
inline void Store8(uint16_t* p, __m256 v) { simd::StoreBf16x8(p, v); }

// Lanes [0, n) of a tail (n < 8).
inline __m256i TailMask(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// The last n % 8 elements as a vector, the rest `fill`.
template <typename T>
inline __m256 LoadTail(const T* p, int64_t n, float fill) {
  const __m256i mask = TailMask(n);
  __m256 v;
  if constexpr (sizeof(T) == 4) {
    v = _mm256_maskload_ps(p, mask);  // (masked lanes are not read)
  } else {
    v = simd::LoadBf16Tail(p, n);
  }
  return _mm256_blendv_ps(_mm256_set1_ps(fill), v, _mm256_castsi256_ps(mask));
}
inline void StoreTail(float* p, int64_t n, __m256 v) { _mm256_maskstore_ps(p, TailMask(n), v); }
inline void StoreTail(uint16_t* p, int64_t n, __m256 v) { simd::StoreBf16Tail(p, n, v); }

// The row's e^(x - max) into e (e may be x itself for fp32), returning the
// reciprocal of their sum; NaN when the row holds a NaN or its maximum is
// infinite (a row all -inf included), as the reference's outputs are then.
template <typename T>
float ExpRow(const T* x, float* e, int64_t n) {
  const float neg_inf = -std::numeric_limits<float>::infinity();
  // Maximum, and whether any element is NaN (max_ps does not keep NaN).
  __m256 m0 = _mm256_set1_ps(neg_inf), m1 = m0;
  __m256 nan = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256 a = Load8(x + i), b = Load8(x + i + 8);
    m0 = _mm256_max_ps(m0, a);
    m1 = _mm256_max_ps(m1, b);
    nan = _mm256_or_ps(nan, _mm256_or_ps(_mm256_cmp_ps(a, a, _CMP_UNORD_Q), _mm256_cmp_ps(b, b, _CMP_UNORD_Q)));
  }
  for (; i + 8 <= n; i += 8) {
    const __m256 a = Load8(x + i);
    m0 = _mm256_max_ps(m0, a);
    nan = _mm256_or_ps(nan, _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
  }
  if (i < n) {
    const __m256 a = LoadTail(x + i, n - i, neg_inf);
    m0 = _mm256_max_ps(m0, a);
    nan = _mm256_or_ps(nan, _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
  }
  const float max = HorizontalMax(_mm256_max_ps(m0, m1));
  if (_mm256_movemask_ps(nan) != 0 || !std::isfinite(max)) return std::numeric_limits<float>::quiet_NaN();
  const __m256 mv = _mm256_set1_ps(max);
  __m256 s0 = _mm256_setzero_ps(), s1 = s0;
  for (i = 0; i + 16 <= n; i += 16) {
    const __m256 a = ExpNonPositiveAvx2(_mm256_sub_ps(Load8(x + i), mv));
    const __m256 b = ExpNonPositiveAvx2(_mm256_sub_ps(Load8(x + i + 8), mv));
    _mm256_storeu_ps(e + i, a);
    _mm256_storeu_ps(e + i + 8, b);
    s0 = _mm256_add_ps(s0, a);
    s1 = _mm256_add_ps(s1, b);
  }
  for (; i + 8 <= n; i += 8) {
    const __m256 a = ExpNonPositiveAvx2(_mm256_sub_ps(Load8(x + i), mv));
    _mm256_storeu_ps(e + i, a);
    s0 = _mm256_add_ps(s0, a);
  }
  if (i < n) {
    const __m256 a = ExpNonPositiveAvx2(_mm256_sub_ps(LoadTail(x + i, n - i, neg_inf), mv));
    StoreTail(e + i, n - i, a);
    s0 = _mm256_add_ps(s0, a);
  }
  return 1.0f / simd::HorizontalSum8(_mm256_add_ps(s0, s1));
}

// out = e * inv, fp32 or rounded to bf16; a NaN inv (ExpRow's verdict)
// makes every output NaN.
template <typename T>
void ScaleRow(const float* e, float inv, T* out, int64_t n) {
  const __m256 iv = _mm256_set1_ps(inv);
  int64_t i = 0;
  if (std::isnan(inv)) {
    // (e was not written.)
    for (; i + 8 <= n; i += 8) Store8(out + i, iv);
    if (i < n) StoreTail(out + i, n - i, iv);
    return;
  }
  for (; i + 8 <= n; i += 8) {
    Store8(out + i, _mm256_mul_ps(_mm256_loadu_ps(e + i), iv));
  }
  if (i < n) StoreTail(out + i, n - i, _mm256_mul_ps(LoadTail(e + i, n - i, 0.0f), iv));
}

}  // namespace

void SoftmaxRowsAvx2(float* x, int64_t rows, int64_t n) {
  for (int64_t r = 0; r < rows; ++r, x += n) ScaleRow(x, ExpRow(x, x, n), x, n);
}

void SoftmaxRowsBf16Avx2(uint16_t* x, int64_t rows, int64_t n) {
  // Three passes per row: the maximum over the bf16 values, the exponentials
  // into one fp32 row with their sum, and the scaled values rounded back.
  const std::unique_ptr<float[]> row(new float[n]);
  for (int64_t r = 0; r < rows; ++r, x += n) ScaleRow(row.get(), ExpRow(x, row.get(), n), x, n);
}

}  // namespace internvl::softmax
