// AVX2 + FMA matrix-vector kernels (this file alone is compiled with -mavx2
// -mfma -mf16c; see CMakeLists.txt). Batch-1 decoding reads every weight once
// per token, so these kernels are memory-bound: they stream the weights with
// plain 256-bit loads (bf16 widened to fp32 by a 16-bit shift), keep the
// input rows in L1/L2, and accumulate 4 output rows x up to 4 input rows at a
// time (more input rows reuse the 4 weight rows from L1: weights are read
// from memory once whatever M).
#include <immintrin.h>

#include "core/llm/gemv_kernels.h"

namespace internvl::llm::gemv {
namespace {

inline float HorizontalSum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v);
  __m128 hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  __m128 shuf = _mm_movehdup_ps(lo);
  __m128 sums = _mm_add_ps(lo, shuf);
  shuf = _mm_movehl_ps(shuf, sums);
  sums = _mm_add_ss(sums, shuf);
  return _mm_cvtss_f32(sums);
}

template <bool kBf16>
inline __m256 Load8(const void* w, int64_t index) {
  if constexpr (kBf16) {
    const auto* p = static_cast<const uint16_t*>(w) + index;
    const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
  } else {
    return _mm256_loadu_ps(static_cast<const float*>(w) + index);
  }
}

template <bool kBf16>
inline float Load1(const void* w, int64_t index) {
  if constexpr (kBf16) {
    const uint32_t bits = static_cast<uint32_t>(static_cast<const uint16_t*>(w)[index]) << 16;
    float f;
    __builtin_memcpy(&f, &bits, sizeof(f));
    return f;
  } else {
    return static_cast<const float*>(w)[index];
  }
}

// kRows consecutive output rows starting at `row`, input rows [m0, m0 + M).
// Only the first group of input rows prefetches: the next groups find the
// block's weights in L1.
template <int kRows, int M, bool kBf16>
inline void Block(const Problem& p, int64_t row, int64_t m0) {
  constexpr int64_t kElem = kBf16 ? 2 : 4;
  // Measured on an AVX2 EPYC: bf16 rows streamed 15 -> 19 GB/s with the
  // prefetch one block ahead; fp32 rows were slower with it.
  const bool prefetch = kBf16 && m0 == 0;
  constexpr int64_t kPrefetchRows = kRows;
  const int64_t in = p.in;
  const int64_t vec_end = in & ~int64_t{7};
  __m256 acc[kRows][M];
#pragma GCC unroll 4
  for (int i = 0; i < kRows; ++i) {
#pragma GCC unroll 4
    for (int m = 0; m < M; ++m) acc[i][m] = _mm256_setzero_ps();
  }
  const int64_t base = row * in;
  // The weights of the next block, one cache line per 64 bytes read: bf16
  // rows are short (1-10 KB), too short for the hardware prefetchers to ramp
  // up on each of the kRows streams.
  const char* ahead = static_cast<const char*>(p.w) + (base + kPrefetchRows * in) * kElem;
  const char* limit = static_cast<const char*>(p.w) + p.out * in * kElem;
  for (int64_t k = 0; k < vec_end; k += 8) {
    if (prefetch) {
      const char* a = ahead + k * kRows * kElem;
      if (a < limit) _mm_prefetch(a, _MM_HINT_T0);
    }
    __m256 xv[M];
#pragma GCC unroll 4
    for (int m = 0; m < M; ++m) xv[m] = _mm256_loadu_ps(p.x + (m0 + m) * in + k);
#pragma GCC unroll 4
    for (int i = 0; i < kRows; ++i) {
      const __m256 wv = Load8<kBf16>(p.w, base + i * in + k);
#pragma GCC unroll 4
      for (int m = 0; m < M; ++m) acc[i][m] = _mm256_fmadd_ps(wv, xv[m], acc[i][m]);
    }
  }
  for (int i = 0; i < kRows; ++i) {
    for (int m = 0; m < M; ++m) {
      float s = HorizontalSum(acc[i][m]);
      for (int64_t k = vec_end; k < in; ++k) s += Load1<kBf16>(p.w, base + i * in + k) * p.x[(m0 + m) * in + k];
      if (p.bias != nullptr) s += p.bias[row + i];
      p.y[(m0 + m) * p.out + row + i] = s;
    }
  }
}

// Input rows in groups of up to 4 (4 x 4 accumulators + 4 inputs fill the 16
// vector registers).
template <int kRows, bool kBf16>
inline void AllInputs(const Problem& p, int64_t row) {
  int64_t m0 = 0;
  for (; m0 + 4 <= p.m; m0 += 4) Block<kRows, 4, kBf16>(p, row, m0);
  switch (p.m - m0) {
    case 1: return Block<kRows, 1, kBf16>(p, row, m0);
    case 2: return Block<kRows, 2, kBf16>(p, row, m0);
    case 3: return Block<kRows, 3, kBf16>(p, row, m0);
    default: return;
  }
}

template <bool kBf16>
void Rows(const Problem& p, int64_t begin, int64_t end) {
  int64_t r = begin;
  for (; r + 4 <= end; r += 4) AllInputs<4, kBf16>(p, r);
  for (; r < end; ++r) AllInputs<1, kBf16>(p, r);
}

}  // namespace

void RowsAvx2(const Problem& p, int64_t row_begin, int64_t row_end) {
  if (p.w_bf16) {
    Rows<true>(p, row_begin, row_end);
  } else {
    Rows<false>(p, row_begin, row_end);
  }
}

}  // namespace internvl::llm::gemv
