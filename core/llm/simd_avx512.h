// Helpers shared by the AVX-512 kernel files (gemv_avx512bf16.cc,
// quant_avx512vnni.cc). Include only from files compiled with -mavx512f.
#pragma once

#include <immintrin.h>

#include <cstdint>

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

using internvl::simd::RoundToBf16x16;

// The lane sums of a 4 x 4 block's accumulators acc[i][m] (weight row i,
// input row m) in one vector, lane 4i + m, each summed as ReduceAddRows sums
// a row (the same bits): per accumulator its 128-bit blocks (0 + 2) +
// (1 + 3), then a 4 x 4 transpose within the blocks puts lane j of (i, m) in
// lane 4i + m of q[j], summed (q0 + q2) + (q1 + q3). (A scalar ending, per
// accumulator through the stack, took ~40% of a batched block's time.)
inline __m512 Sums4x4(const __m512 (&acc)[4][4]) {
  auto halves = [](__m512 a, __m512 b) {
    return _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));
  };
  __m512 blocks[4];  // per input m: 128-bit block i = row i's 4 lane sums
#pragma GCC unroll 4
  for (int m = 0; m < 4; ++m) {
    const __m512 x = halves(acc[0][m], acc[1][m]), y = halves(acc[2][m], acc[3][m]);
    blocks[m] = _mm512_add_ps(_mm512_shuffle_f32x4(x, y, 0x88), _mm512_shuffle_f32x4(x, y, 0xDD));
  }
  const __m512 t0 = _mm512_unpacklo_ps(blocks[0], blocks[1]), t1 = _mm512_unpackhi_ps(blocks[0], blocks[1]);
  const __m512 t2 = _mm512_unpacklo_ps(blocks[2], blocks[3]), t3 = _mm512_unpackhi_ps(blocks[2], blocks[3]);
  auto lo = [](__m512 a, __m512 b) {
    return _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
  };
  auto hi = [](__m512 a, __m512 b) {
    return _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
  };
  return _mm512_add_ps(_mm512_add_ps(lo(t0, t2), lo(t1, t3)), _mm512_add_ps(hi(t0, t2), hi(t1, t3)));
}

// Four per-row values v[0, 4) spread as Sums4x4's lanes: lane 4i + m = v[i].
inline __m512 PerRow4x4(__m128 v) {
  return _mm512_permutexvar_ps(_mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0),
                               _mm512_castps128_ps512(v));
}

// Sums4x4's lanes (lane 4i + m: output row r + i of input row m0 + m) stored
// into p.y (fp32) or p.y_bf16 (rounded as FloatToBf16Bits), rows of p.out.
template <typename P>
inline void Store4x4Lanes(const P& p, int64_t r, int64_t m0, __m512 sums) {
  // Lane 4m + i: input m's 4 outputs together.
  const __m512 by_input =
      _mm512_permutexvar_ps(_mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0), sums);
  if (p.y_bf16 == nullptr) {
    float* y = p.y + m0 * p.out + r;
    _mm_storeu_ps(y, _mm512_castps512_ps128(by_input));
    _mm_storeu_ps(y + p.out, _mm512_extractf32x4_ps(by_input, 1));
    _mm_storeu_ps(y + 2 * p.out, _mm512_extractf32x4_ps(by_input, 2));
    _mm_storeu_ps(y + 3 * p.out, _mm512_extractf32x4_ps(by_input, 3));
  } else {
    const __m256i h = RoundToBf16x16(by_input);
    const __m128i a = _mm256_castsi256_si128(h), b = _mm256_extracti128_si256(h, 1);
    uint16_t* y = p.y_bf16 + m0 * p.out + r;
    _mm_storel_epi64(reinterpret_cast<__m128i*>(y), a);
    _mm_storel_epi64(reinterpret_cast<__m128i*>(y + p.out), _mm_unpackhi_epi64(a, a));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(y + 2 * p.out), b);
    _mm_storel_epi64(reinterpret_cast<__m128i*>(y + 3 * p.out), _mm_unpackhi_epi64(b, b));
  }
}

inline float ReduceAdd(__m512 v) {
  float s;
  ReduceAddRows<1>(&v, &s);
  return s;
}

using internvl::simd::ExpNonPositiveAvx512;
using internvl::simd::HorizontalSum8;  // (the 256-bit streaming kernels' lane sums)

}  // namespace internvl::llm::simd
