// AVX-512-BF16 matrix-vector kernels (this file alone is compiled with
// -mavx512f -mavx512bw -mavx512bf16; gemv.cc checks the CPU at run time).
// For bf16 weights AND bf16 inputs (a model computed in bf16 on a CPU with
// native bf16): one vdpbf16ps multiplies 32 bf16 pairs and accumulates them
// into 16 fp32 lanes, so a 64-byte weight load feeds one instruction per
// input row. 4 weight rows x 4 input rows at a time (16 accumulators); more
// input rows re-read the 4 weight rows from L1, so the weights stream from
// memory once whatever M. (8 weight rows x 2 inputs measured slower in the
// server: 115 against 136 tokens/s at 8 streams.)
// Arithmetic: products of bf16 values (exact in fp32), summed in fp32, as a
// native bf16 GEMM does.
#include <immintrin.h>

#include "core/llm/gemv_kernels.h"

namespace internvl::llm::gemv {
namespace {

inline float Bf16ToFloat(uint16_t v) {
  const uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  __builtin_memcpy(&f, &bits, sizeof(f));
  return f;
}

// Sum of the 16 lanes (not _mm512_reduce_add_ps: GCC 12's header trips
// -Wmaybe-uninitialized in it).
inline float ReduceAdd(__m512 v) {
  alignas(64) float t[16];
  _mm512_store_ps(t, v);
  float s[8];
  for (int i = 0; i < 8; ++i) s[i] = t[i] + t[i + 8];
  return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
}

template <int kRows, int M>
inline void Block(const Problem& p, int64_t row, int64_t m0) {
  const int64_t in = p.in;
  const int64_t vec_end = in & ~int64_t{31};
  const auto* w = static_cast<const uint16_t*>(p.w) + row * in;
  const uint16_t* x = p.x_bf16;
  const bool prefetch = m0 == 0;
  const char* ahead = reinterpret_cast<const char*>(w + kRows * in);
  const char* limit = reinterpret_cast<const char*>(static_cast<const uint16_t*>(p.w) + p.out * in);
  __m512 acc[kRows][M];
#pragma GCC unroll 8
  for (int i = 0; i < kRows; ++i) {
#pragma GCC unroll 4
    for (int m = 0; m < M; ++m) acc[i][m] = _mm512_setzero_ps();
  }
  for (int64_t k = 0; k < vec_end; k += 32) {
    if (prefetch) {
      // One block of rows ahead: 4 rows are too short for the hardware
      // prefetchers to ramp up on each stream.
      const char* a = ahead + k * kRows * 2;
      if (a + 64 * kRows <= limit) {
#pragma GCC unroll 8
        for (int i = 0; i < kRows; ++i) _mm_prefetch(a + 64 * i, _MM_HINT_T0);
      }
    }
    __m512bh xv[M];
#pragma GCC unroll 4
    for (int m = 0; m < M; ++m) xv[m] = (__m512bh)_mm512_loadu_si512(x + (m0 + m) * in + k);
#pragma GCC unroll 8
    for (int i = 0; i < kRows; ++i) {
      const __m512bh wv = (__m512bh)_mm512_loadu_si512(w + i * in + k);
#pragma GCC unroll 4
      for (int m = 0; m < M; ++m) acc[i][m] = _mm512_dpbf16_ps(acc[i][m], wv, xv[m]);
    }
  }
  for (int i = 0; i < kRows; ++i) {
    for (int m = 0; m < M; ++m) {
      float s = ReduceAdd(acc[i][m]);
      for (int64_t k = vec_end; k < in; ++k) s += Bf16ToFloat(w[i * in + k]) * Bf16ToFloat(x[(m0 + m) * in + k]);
      if (p.bias != nullptr) s += p.bias[row + i];
      p.y[(m0 + m) * p.out + row + i] = s;
    }
  }
}

template <int kRows>
inline void AllInputs(const Problem& p, int64_t row) {
  int64_t m0 = 0;
  for (; m0 + 4 <= p.m; m0 += 4) Block<kRows, 4>(p, row, m0);
  switch (p.m - m0) {
    case 1:
      return Block<kRows, 1>(p, row, m0);
    case 2:
      return Block<kRows, 2>(p, row, m0);
    case 3:
      return Block<kRows, 3>(p, row, m0);
    default:
      return;
  }
}

}  // namespace

void RowsAvx512Bf16(const Problem& p, int64_t row_begin, int64_t row_end) {
  int64_t r = row_begin;
  for (; r + 4 <= row_end; r += 4) AllInputs<4>(p, r);
  for (; r < row_end; ++r) AllInputs<1>(p, r);
}

bool CpuHasAvx512Bf16() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512bf16");
  }();
  return has;
}

}  // namespace internvl::llm::gemv
