// Helpers shared by the AVX-512 kernel files (gemv_avx512bf16.cc,
// quant_avx512vnni.cc). Include only from files compiled with -mavx512f.
#pragma once

#include <immintrin.h>

#include "core/nn/bf16_avx512.h"
#include "core/nn/exp_avx512.h"
#include "core/nn/simd_avx2.h"

namespace internvl::llm::simd {

// Sums of the 16 lanes of kRows vectors (1, 2 or 4) into out[0, kRows), by
// one fixed tree whatever kRows, so that a row's sum has the same bits
// whether it is reduced alone or with others: 128-bit blocks (0 + 2) +
// (1 + 3), then lanes (0 + 2) + (1 + 3) within the block. Several rows share
// the shuffles: a row alone through the stack and 15 scalar adds cost about
// as much as an 896-input row's dot products in the decode kernels.
// (GCC 12's headers leave the unused lanes of shuffles undefined on purpose,
// which -Wuninitialized reports inside the intrinsics.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
template <int kRows>
inline void ReduceAddRows(const __m512* v, float* out) {
  static_assert(kRows == 1 || kRows == 2 || kRows == 4);
  __m512 blocks;  // 128-bit block i: the block sums of row i (rows 0 and 2 for kRows 2)
  if constexpr (kRows == 1) {
    const __m512 s = _mm512_add_ps(v[0], _mm512_shuffle_f32x4(v[0], v[0], 0x4E));  // (0 + 2), (1 + 3)
    blocks = _mm512_add_ps(s, _mm512_shuffle_f32x4(s, s, 0xB1));
  } else {
    // Row a's (0 + 2), (1 + 3) in blocks 0-1, row b's in blocks 2-3.
    auto halves = [](__m512 a, __m512 b) {
      return _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));
    };
    const __m512 x = halves(v[0], v[1]);
    const __m512 y = kRows == 4 ? halves(v[2], v[3]) : x;
    // Blocks x0 x2 y0 y2 plus x1 x3 y1 y3: rows 0, 1, 2, 3 (0, 1, 0, 1 for two).
    blocks = _mm512_add_ps(_mm512_shuffle_f32x4(x, y, 0x88), _mm512_shuffle_f32x4(x, y, 0xDD));
  }
  __m512 t = _mm512_add_ps(blocks, _mm512_permute_ps(blocks, 0x4E));  // lanes (0 + 2), (1 + 3)
  t = _mm512_add_ps(t, _mm512_permute_ps(t, 0xB1));
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, t);
#pragma GCC unroll 4
  for (int i = 0; i < kRows; ++i) out[i] = lanes[4 * i];
}
#pragma GCC diagnostic pop

// ReduceAddRows over column m of a kernel's kRows x M accumulators (one
// per weight row and input row).
template <int kRows, int M>
inline void ReduceAddColumn(const __m512 (&acc)[kRows][M], int m, float* out) {
  __m512 column[kRows];
#pragma GCC unroll 4
  for (int i = 0; i < kRows; ++i) column[i] = acc[i][m];
  ReduceAddRows<kRows>(column, out);
}

inline float ReduceAdd(__m512 v) {
  float s;
  ReduceAddRows<1>(&v, &s);
  return s;
}

using internvl::simd::ExpNonPositiveAvx512;
using internvl::simd::HorizontalSum8;  // (the 256-bit streaming kernels' lane sums)
using internvl::simd::RoundToBf16x16;

}  // namespace internvl::llm::simd
