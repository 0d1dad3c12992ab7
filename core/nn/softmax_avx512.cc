// AVX-512 softmax over rows (softmax.h): the AVX2 kernel's three passes in
// 16 lanes, with masked tails. This file alone is compiled for AVX-512F/BW
// and includes no torch headers; softmax.cc checks the CPU first.
// GCC 12's AVX-512 headers leave lanes undefined on purpose in reductions
// and conversions, which -W(maybe-)uninitialized reports inside them.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>

#include "core/nn/bf16_avx512.h"
#include "core/nn/exp_avx512.h"
#include "core/nn/softmax_kernels.h"

namespace internvl::softmax {
namespace {

using simd::ExpNonPositiveAvx512;

inline __mmask16 Lanes(int64_t n) { return n >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << n) - 1); }

// Up to 16 fp32 or bf16 values (lanes m) as fp32, the others `fill`.
inline __m512 Load16(const float* p, __mmask16 m, __m512 fill) { return _mm512_mask_loadu_ps(fill, m, p); }
inline __m512 Load16(const uint16_t* p, __mmask16 m, __m512 fill) {
  const __m512i wide = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16);
  return _mm512_mask_blend_ps(m, fill, _mm512_castsi512_ps(wide));
}
inline void Store16(float* p, __mmask16 m, __m512 v) { _mm512_mask_storeu_ps(p, m, v); }
// Rounded to bf16 to nearest even, NaN -> 0x7FC0 (libtorch's cast).
inline void Store16(uint16_t* p, __mmask16 m, __m512 v) { _mm256_mask_storeu_epi16(p, m, simd::RoundToBf16x16(v)); }

// The row's e^(x - max) into e (e may be x itself for fp32), returning the
// reciprocal of their sum; NaN when the row holds a NaN or its maximum is
// infinite, as the AVX2 kernel.
template <typename T>
float ExpRow(const T* x, float* e, int64_t n) {
  const __m512 neg_inf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  __m512 m0 = neg_inf, m1 = neg_inf;
  __mmask16 nan = 0;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512 a = Load16(x + i, 0xFFFF, neg_inf), b = Load16(x + i + 16, 0xFFFF, neg_inf);
    m0 = _mm512_max_ps(m0, a);
    m1 = _mm512_max_ps(m1, b);
    nan |= _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q) | _mm512_cmp_ps_mask(b, b, _CMP_UNORD_Q);
  }
  for (; i < n; i += 16) {
    const __m512 a = Load16(x + i, Lanes(n - i), neg_inf);
    m0 = _mm512_max_ps(m0, a);
    nan |= _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q);
  }
  const float max = _mm512_reduce_max_ps(_mm512_max_ps(m0, m1));
  if (nan != 0 || !std::isfinite(max)) return std::numeric_limits<float>::quiet_NaN();
  __mmask16 unused = 0;  // (NaNs found above)
  return 1.0f /
         simd::ExpSumAvx512([&](int64_t k, __mmask16 m) { return Load16(x + k, m, neg_inf); }, n, max, e, &unused);
}

// out = e * inv, fp32 or rounded to bf16; a NaN inv makes every output NaN.
template <typename T>
void ScaleRow(const float* e, float inv, T* out, int64_t n) {
  const __m512 iv = _mm512_set1_ps(inv);
  const bool nan = std::isnan(inv);  // (e was not written)
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = Lanes(n - i);
    Store16(out + i, m, nan ? iv : _mm512_mul_ps(_mm512_maskz_loadu_ps(m, e + i), iv));
  }
}

}  // namespace

void SoftmaxRowsAvx512(float* x, int64_t rows, int64_t n) {
  for (int64_t r = 0; r < rows; ++r, x += n) ScaleRow(x, ExpRow(x, x, n), x, n);
}

void SoftmaxRowsBf16Avx512(uint16_t* x, int64_t rows, int64_t n) {
  const std::unique_ptr<float[]> row(new float[n]);
  for (int64_t r = 0; r < rows; ++r, x += n) ScaleRow(row.get(), ExpRow(x, row.get(), n), x, n);
}

}  // namespace internvl::softmax
