// AVX2 quantized matrix-vector kernels (compiled with -mavx2 -mfma; see
// quant_kernels.h for the arithmetic). vpmaddubsw multiplies unsigned by
// signed bytes into saturating 16-bit pair sums: int8 weights (|w| <= 127)
// go in as |w| against sign(x, w), so no pair exceeds 2 * 127 * 127; int4
// weights (0..15) go in directly. One input row at a time, 4 output rows per
// step (the 4 rows' weights stay in L1 for the next input row).
#include <immintrin.h>

#include "core/llm/quant_kernels.h"
#include "core/llm/row_order.h"

namespace internvl::llm::quant {
namespace {

inline float HorizontalSum(__m256 v) {
  __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  __m128 shuf = _mm_movehdup_ps(lo);
  __m128 sums = _mm_add_ps(lo, shuf);
  shuf = _mm_movehl_ps(shuf, sums);
  return _mm_cvtss_f32(_mm_add_ss(sums, shuf));
}

// 32 int8 products summed into 8 int32 lanes, as fp32.
inline __m256 DotInt8(__m256i w_abs, __m256i w, __m256i x, __m256i ones) {
  const __m256i pairs = _mm256_maddubs_epi16(w_abs, _mm256_sign_epi8(x, w));
  return _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
}

inline __m256 DotU4(__m256i w, __m256i x, __m256i ones) {
  return _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(w, x), ones));
}

template <int kRows>
void Int8Block(const Int8Problem& p, const int64_t* rows, int64_t m) {
  const Activations& a = *p.a;
  const int64_t blocks = a.inp / kBlock;
  const int8_t* x = a.xq.data() + m * a.inp;
  const float* d = a.d.data() + m * blocks;
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[kRows];
  for (int i = 0; i < kRows; ++i) acc[i] = _mm256_setzero_ps();
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t k = b * kBlock;
    const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + k));
    const __m256 dv = _mm256_broadcast_ss(d + b);
#pragma GCC unroll 4
    for (int i = 0; i < kRows; ++i) {
      const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.w + rows[i] * a.inp + k));
      acc[i] = _mm256_fmadd_ps(DotInt8(_mm256_abs_epi8(wv), wv, xv, ones), dv, acc[i]);
    }
  }
  for (int i = 0; i < kRows; ++i) {
    float y = p.scale[rows[i]] * HorizontalSum(acc[i]);
    if (p.bias != nullptr) y += p.bias[rows[i]];
    StoreY(p, m * p.out + rows[i], y);
  }
}

template <int kRows>
void Int4Block(const Int4Problem& p, const int64_t* rows, int64_t m) {
  const Activations& a = *p.a;
  const int64_t blocks = a.inp / kBlock, groups = a.inp / p.group, row_bytes = a.inp / 2;
  const int8_t* x = a.xq.data() + m * a.inp;
  const float* d = a.d.data() + m * blocks;
  const __m256i ones = _mm256_set1_epi16(1), low = _mm256_set1_epi8(0x0F);
  __m256 acc[kRows];
  for (int i = 0; i < kRows; ++i) acc[i] = _mm256_setzero_ps();
  for (int64_t k = 0; k < a.inp; k += kChunk4) {
    // Each 32-byte half h of the chunk's 64 bytes: its low nibbles are
    // inputs k + 32h .. +31, its high nibbles inputs k + 64 + 32h .. +31.
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      const int64_t k_lo = k + 32 * h, k_hi = k + 64 + 32 * h;
      const __m256i x_lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + k_lo));
      const __m256i x_hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + k_hi));
#pragma GCC unroll 4
      for (int i = 0; i < kRows; ++i) {
        const float* scale = p.scale + rows[i] * groups;
        const __m256i v =
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.w + rows[i] * row_bytes + k / 2 + 32 * h));
        const __m256i lo = _mm256_and_si256(v, low), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
        acc[i] =
            _mm256_fmadd_ps(DotU4(lo, x_lo, ones), _mm256_set1_ps(d[k_lo / kBlock] * scale[k_lo / p.group]), acc[i]);
        acc[i] =
            _mm256_fmadd_ps(DotU4(hi, x_hi, ones), _mm256_set1_ps(d[k_hi / kBlock] * scale[k_hi / p.group]), acc[i]);
      }
    }
  }
  for (int i = 0; i < kRows; ++i) {
    float y = HorizontalSum(acc[i]);
    const float* zmin = p.zmin + rows[i] * groups;
    const float* gsum = a.gsum.data() + m * groups;
    // The zero points' term in 4 independent partial sums (one chain of
    // dependent FMAs was a large part of a short row's time).
    float zp[4] = {0, 0, 0, 0};
    for (int64_t g = 0; g < groups; ++g) zp[g & 3] += zmin[g] * gsum[g];
    y += (zp[0] + zp[1]) + (zp[2] + zp[3]);
    if (p.bias != nullptr) y += p.bias[rows[i]];
    StoreY(p, m * p.out + rows[i], y);
  }
}

}  // namespace

// Output rows in row_order.h's order, streaming for one input row (these
// kernels take one input row at a time; with more, 4 adjacent rows' weights
// stay in L1 for the next input row).
void Int8RowsAvx2(const Int8Problem& p, int64_t row_begin, int64_t row_end) {
  VisitRows(row_begin, row_end, p.a->m == 1, [&](const int64_t* rows, int n) {
    for (int64_t m = 0; m < p.a->m; ++m) {
      n == 4 ? Int8Block<4>(p, rows, m) : n == 2 ? Int8Block<2>(p, rows, m) : Int8Block<1>(p, rows, m);
    }
  });
}

void Int4RowsAvx2(const Int4Problem& p, int64_t row_begin, int64_t row_end) {
  VisitRows(row_begin, row_end, p.a->m == 1, [&](const int64_t* rows, int n) {
    for (int64_t m = 0; m < p.a->m; ++m) {
      n == 4 ? Int4Block<4>(p, rows, m) : n == 2 ? Int4Block<2>(p, rows, m) : Int4Block<1>(p, rows, m);
    }
  });
}

}  // namespace internvl::llm::quant
