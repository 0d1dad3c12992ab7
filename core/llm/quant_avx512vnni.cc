// AVX-512 VNNI quantized matrix-vector kernels (compiled with -mavx512f
// -mavx512bw -mavx512vl -mavx512vnni -mfma; see quant_kernels.h for the
// arithmetic). vpdpbusd multiplies 64 unsigned by 64 signed bytes into 16
// int32 lanes of 4 products each (32 into 8 in 256-bit vectors, which the
// int8 streaming kernel for one or two input rows uses: see Int8Stream). In
// 512-bit vectors, int8: a 64-byte chunk of inputs spans two
// activation blocks (lanes 0-7 and 8-15), so each lane is scaled by its
// block's scale (Activations::lane_d) when converted to fp32. int4: the
// blocks of each 64-input half share one scale (spans of 64 or 128), so the
// half's lanes take Activations::d of its first block.
// int8 weights are made unsigned by flipping their sign bit (w + 128); the
// lanes start from -128 * (sum of their inputs) (Activations::corr), which
// cancels the offset exactly. int4 weights (0..15) are unsigned already.
// 4 output rows x up to 4 input rows per step: the weights stream from
// memory once whatever the number of input rows.
// GCC 12's AVX-512 headers leave lanes undefined on purpose in casts and
// conversions, which -Wmaybe-uninitialized reports inside the intrinsics.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>

#include "core/llm/in_register.h"
#include "core/llm/quant_kernels.h"
#include "core/llm/row_order.h"
#include "core/llm/simd_avx512.h"

namespace internvl::llm::quant {
namespace {

using simd::HorizontalSum8;
using simd::ReduceAddColumn;
using simd::ReduceAddRows;

inline __m256i Load256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

// Rows rows[0..kRows) x input rows [m0, m0 + M). Adjacent rows (rows[i] =
// rows[0] + i) prefetch one block ahead; split ones are two streams far apart
// (see row_order.h).
template <int kRows, int M>
void Int8Block(const Int8Problem& p, const int64_t* rows, int64_t m0) {
  const Activations& a = *p.a;
  const int64_t inp = a.inp, lanes = inp / 4;
  const int64_t row = rows[0];
  const int8_t* w = p.w + row * inp;
  const bool prefetch = m0 == 0 && rows[kRows - 1] == row + kRows - 1;
  const char* ahead = reinterpret_cast<const char*>(w + kRows * inp);
  const char* limit = reinterpret_cast<const char*>(p.w + p.out * inp);
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  __m512 acc[kRows][M];
#pragma GCC unroll 4
  for (int i = 0; i < kRows; ++i)
#pragma GCC unroll 4
    for (int m = 0; m < M; ++m) acc[i][m] = _mm512_setzero_ps();
  for (int64_t k = 0; k < inp; k += kChunk) {
    if (prefetch) {
      const char* next = ahead + k * kRows;
      if (next + 64 * kRows <= limit) {
#pragma GCC unroll 4
        for (int i = 0; i < kRows; ++i) _mm_prefetch(next + 64 * i, _MM_HINT_T0);
      }
    }
    __m512i wv[kRows];
#pragma GCC unroll 4
    for (int i = 0; i < kRows; ++i) wv[i] = _mm512_xor_si512(_mm512_loadu_si512(p.w + rows[i] * inp + k), flip);
#pragma GCC unroll 4
    for (int m = 0; m < M; ++m) {
      const __m512i xv = _mm512_loadu_si512(a.xq.data() + (m0 + m) * inp + k);
      const __m512i cv = _mm512_loadu_si512(a.corr.data() + (m0 + m) * lanes + k / 4);
      const __m512 dv = _mm512_loadu_ps(a.lane_d.data() + (m0 + m) * lanes + k / 4);
#pragma GCC unroll 4
      for (int i = 0; i < kRows; ++i) {
        const __m512i t = _mm512_dpbusd_epi32(cv, wv[i], xv);
        acc[i][m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), dv, acc[i][m]);
      }
    }
  }
#pragma GCC unroll 4
  for (int m = 0; m < M; ++m) {
    float sums[kRows];
    ReduceAddColumn(acc, m, sums);
#pragma GCC unroll 4
    for (int i = 0; i < kRows; ++i) {
      float y = p.scale[rows[i]] * sums[i];
      if (p.bias != nullptr) y += p.bias[rows[i]];
      StoreY(p, (m0 + m) * p.out + rows[i], y);
    }
  }
}

// M input rows (the weights stream from memory once), rows in VisitRows'
// streaming order (pairs of rows far apart), in 256-bit vectors: per row
// and 64-input chunk, one vpdpbusd per 32-input activation block (block b
// in accumulator b % 2), its lanes started from the block's corr (-128 x the
// sum of each lane's 4 inputs, made by a vpdpbusd on the inputs in
// registers: the same values as Activations::corr) and scaled by the
// block's scale when converted.
// In 256-bit vectors (as the bf16 streaming kernel, gemv_avx512bf16.cc; not
// Int4StreamG128, see there): the same arithmetic in 512-bit vectors
// (two blocks per vpdpbusd, the scales permuted out of a window) streamed
// slower on the 2-core Zen 5 VM, InternVL2-1B at 2500 positions, alternated
// in one process: int8 decode 13.05 -> 11.93 ms per step (the AVX2 kernel
// 12.04), 16.21 -> 14.50 in a slower period; two sequences 12.68 -> 11.58;
// the 4-bit layers' int8 head included, 10.70 -> 10.02. From L2 it runs 49
// GB/s on one thread (58 in 512-bit vectors).
template <int M>
void Int8Stream(const Int8Problem& p, int64_t row_begin, int64_t row_end) {
  const Activations& a = *p.a;
  const int64_t inp = a.inp, blocks = inp / kBlock;
  const int8_t* x = a.xq.data();
  const float* d = a.d.data();
  const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80));
  auto pair = [&](int64_t r0, int64_t r1) __attribute__((always_inline)) {
    const int8_t* w0 = p.w + r0 * inp;
    const int8_t* w1 = p.w + r1 * inp;
    __m256 acc0[2][M], acc1[2][M];
#pragma GCC unroll 2
    for (int j = 0; j < 2; ++j)
#pragma GCC unroll 4
      for (int m = 0; m < M; ++m) acc0[j][m] = acc1[j][m] = _mm256_setzero_ps();
    for (int64_t b = 0; b < blocks; b += 2) {
      const int64_t k = b * kBlock;
      PrefetchAhead(w0, k, inp, inp);
      PrefetchAhead(w1, k, inp, inp);
#pragma GCC unroll 2
      for (int j = 0; j < 2; ++j) {
        const __m256i u0 = InRegister(_mm256_xor_si256(Load256(w0 + k + kBlock * j), flip));
        const __m256i u1 = InRegister(_mm256_xor_si256(Load256(w1 + k + kBlock * j), flip));
#pragma GCC unroll 4
        for (int m = 0; m < M; ++m) {
          const __m256i xv = InRegister(Load256(x + m * inp + k + kBlock * j));
          const __m256i cv =
              _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_dpbusd_epi32(_mm256_setzero_si256(), flip, xv));
          const __m256 dv = _mm256_broadcast_ss(d + m * blocks + b + j);
          acc0[j][m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_dpbusd_epi32(cv, u0, xv)), dv, acc0[j][m]);
          acc1[j][m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_dpbusd_epi32(cv, u1, xv)), dv, acc1[j][m]);
        }
      }
    }
#pragma GCC unroll 4
    for (int m = 0; m < M; ++m) {
      float y0 = p.scale[r0] * HorizontalSum8(_mm256_add_ps(acc0[0][m], acc0[1][m]));
      float y1 = p.scale[r1] * HorizontalSum8(_mm256_add_ps(acc1[0][m], acc1[1][m]));
      if (p.bias != nullptr) y0 += p.bias[r0], y1 += p.bias[r1];
      StoreY(p, m * p.out + r0, y0);
      StoreY(p, m * p.out + r1, y1);
    }
  };
  const int64_t half = (row_end - row_begin) / 2;
  for (int64_t i = 0; i < half; ++i) pair(row_begin + i, row_begin + half + i);
  if ((row_end - row_begin) % 2 != 0) {
    const int64_t last = row_end - 1;
    Int8Block<1, M>(p, &last, 0);
  }
}

// The rows of one visit of the 4-bit kernels: their weights and group
// scales, and whether (adjacent rows, first input rows) and from where their
// next chunks are prefetched.
template <int kRows>
struct Int4Visit {
  const uint8_t* wr[kRows];
  const float* scale[kRows];
  bool prefetch;
  const char* ahead;  // the bytes after the rows
  const char* limit;  // the end of the matrix

  Int4Visit(const Int4Problem& p, const int64_t* rows, int64_t m0) {
#pragma GCC unroll 4
    for (int i = 0; i < kRows; ++i) {
      wr[i] = p.w + rows[i] * p.w_stride;
      scale[i] = p.scale + rows[i] * p.s_stride;
    }
    prefetch = m0 == 0 && rows[kRows - 1] == rows[0] + kRows - 1;
    ahead = reinterpret_cast<const char*>(wr[0] + kRows * p.w_stride);
    limit = reinterpret_cast<const char*>(p.w + (p.out - 1) * p.w_stride + p.a->inp / 2);
  }

  // The chunk at byte kb of each row: lo[i] its inputs k .. k + 63 (low
  // nibbles), hi[i] k + 64 .. k + 127 (high nibbles); the next chunk
  // prefetched first where the rows are adjacent.
  __attribute__((always_inline)) void Load(int64_t kb, __m512i* lo, __m512i* hi) const {
    if (prefetch) {
      const char* next = ahead + kb * kRows;
      if (next + 64 * kRows <= limit) {
#pragma GCC unroll 4
        for (int i = 0; i < kRows; ++i) _mm_prefetch(next + 64 * i, _MM_HINT_T0);
      }
    }
    const __m512i low = _mm512_set1_epi8(0x0F);
#pragma GCC unroll 4
    for (int i = 0; i < kRows; ++i) {
      const __m512i v = InRegister(_mm512_loadu_si512(wr[i] + kb));
      lo[i] = _mm512_and_si512(v, low);
      hi[i] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
    }
  }
};

// Output row rows[i] of input row m from t[i], the lanes of its group-scaled
// sums: the zero points' term, sum_g zmin[g] * gsum[g], added in vectors to
// the lanes before they are summed (a scalar chain of FMAs here took 18% of
// the kernel's time at 7 groups a row), then the bias, then stored.
template <int kRows>
__attribute__((always_inline)) inline void StoreInt4Rows(const Int4Problem& p, const int64_t* rows, int64_t m,
                                                         int64_t groups, __m512* t) {
  const float* gsum = p.a->gsum.data() + m * groups;
#pragma GCC unroll 4
  for (int i = 0; i < kRows; ++i) {
    const float* zmin = p.zmin + rows[i] * p.s_stride;
    for (int64_t g = 0; g < groups; g += 16) {
      const __mmask16 mask = groups - g >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (groups - g)) - 1);
      t[i] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, zmin + g), _mm512_maskz_loadu_ps(mask, gsum + g), t[i]);
    }
  }
  float sums[kRows];
  ReduceAddRows<kRows>(t, sums);
#pragma GCC unroll 4
  for (int i = 0; i < kRows; ++i) {
    float y = sums[i];
    if (p.bias != nullptr) y += p.bias[rows[i]];
    StoreY(p, m * p.out + rows[i], y);
  }
}

// kSpan: inputs sharing one activation scale (Activations::SpanFor). With
// 128 (groups of 128 multiples) a chunk's two halves share their scale and
// group, so their dot products go into one int32 vector before it is
// converted and scaled once; with 64 each half has its own scale and group.
// Per row and input row, one accumulator per half (one with spans of 128) of
// the activation-scaled sums, multiplied by the row's group scale once, when
// that half moves on to another group (as in the AVX2 kernel).
template <int kRows, int M, int kSpan>
void Int4Block(const Int4Problem& p, const int64_t* rows, int64_t m0, int64_t groups) {
  constexpr int kHalves = kSpan == 128 ? 1 : 2;
  const Activations& a = *p.a;
  const int64_t inp = a.inp, blocks = inp / kBlock;
  const Int4Visit<kRows> visit(p, rows, m0);
  const float* const* scale = visit.scale;
  __m512 acc[kRows][M], part[kHalves][kRows][M];
#pragma GCC unroll 4
  for (int i = 0; i < kRows; ++i)
#pragma GCC unroll 4
    for (int m = 0; m < M; ++m) {
      acc[i][m] = _mm512_setzero_ps();
#pragma GCC unroll 2
      for (int h = 0; h < kHalves; ++h) part[h][i][m] = _mm512_setzero_ps();
    }
  // The groups the halves are in (inputs [end - group, end)), moved on at
  // the top of a chunk (the first, with group 64, flushes zeros).
  int64_t g_lo = 0, lo_end = p.group, g_hi = 0, hi_end = p.group;
  for (int64_t k = 0; k < inp; k += kChunk4) {
    if (k >= lo_end) {
#pragma GCC unroll 4
      for (int i = 0; i < kRows; ++i)
#pragma GCC unroll 2
        for (int m = 0; m < M; ++m) {
          acc[i][m] = _mm512_fmadd_ps(part[0][i][m], _mm512_set1_ps(scale[i][g_lo]), acc[i][m]);
          part[0][i][m] = _mm512_setzero_ps();
        }
      while (k >= lo_end) ++g_lo, lo_end += p.group;
    }
    if (kHalves == 2 && k + 64 >= hi_end) {
#pragma GCC unroll 4
      for (int i = 0; i < kRows; ++i)
#pragma GCC unroll 2
        for (int m = 0; m < M; ++m) {
          acc[i][m] = _mm512_fmadd_ps(part[kHalves - 1][i][m], _mm512_set1_ps(scale[i][g_hi]), acc[i][m]);
          part[kHalves - 1][i][m] = _mm512_setzero_ps();
        }
      while (k + 64 >= hi_end) ++g_hi, hi_end += p.group;
    }
    __m512i lo[kRows], hi[kRows];
    visit.Load(k / 2, lo, hi);
#pragma GCC unroll 2
    for (int m = 0; m < M; ++m) {
      const int8_t* x = a.xq.data() + (m0 + m) * inp + k;
      const float* d = a.d.data() + (m0 + m) * blocks + k / kBlock;
      const __m512i x_lo = InRegister(_mm512_loadu_si512(x)), x_hi = InRegister(_mm512_loadu_si512(x + 64));
      // (The blocks of a half share their scale: spans are 64 or 128.)
      const __m512 d_lo = _mm512_set1_ps(d[0]), d_hi = _mm512_set1_ps(d[2]);
#pragma GCC unroll 4
      for (int i = 0; i < kRows; ++i) {
        const __m512i t_lo = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo[i], x_lo);
        if constexpr (kHalves == 1) {
          const __m512i t = _mm512_dpbusd_epi32(t_lo, hi[i], x_hi);
          part[0][i][m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), d_lo, part[0][i][m]);
        } else {
          const __m512i t_hi = _mm512_dpbusd_epi32(_mm512_setzero_si512(), hi[i], x_hi);
          part[0][i][m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t_lo), d_lo, part[0][i][m]);
          part[1][i][m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t_hi), d_hi, part[1][i][m]);
        }
      }
    }
  }
#pragma GCC unroll 2
  for (int m = 0; m < M; ++m) {
    __m512 t[kRows];
#pragma GCC unroll 4
    for (int i = 0; i < kRows; ++i) {
      t[i] = _mm512_fmadd_ps(part[0][i][m], _mm512_set1_ps(scale[i][g_lo]), acc[i][m]);
      if (kHalves == 2) t[i] = _mm512_fmadd_ps(part[kHalves - 1][i][m], _mm512_set1_ps(scale[i][g_hi]), t[i]);
    }
    StoreInt4Rows<kRows>(p, rows, m0 + m, groups, t);
  }
}

// Groups of 128 (AWQ's, and --quantize int4's): a chunk is one group at one
// activation scale (span_d), so its dot product is converted once and
// scaled by the product of the two scales, with no per-group partial sums.
// Those products are made by vectors for a window of 16 chunks at a time and
// read by the FMAs as broadcast memory operands (no scalar product and
// broadcast per chunk). Two accumulators per row (even and odd chunks)
// halve the FMA chains, where they fit (at most 8 rows x inputs).
template <int kRows, int M>
void Int4BlockG128(const Int4Problem& p, const int64_t* rows, int64_t m0, int64_t groups) {
  constexpr int64_t kWindow = 16;
  const Activations& a = *p.a;
  const int64_t inp = a.inp;
  const Int4Visit<kRows> visit(p, rows, m0);
  const float* const* scale = visit.scale;
  alignas(64) float sd[kRows][M][kWindow];
  constexpr int kSets = kRows * M > 8 ? 1 : 2;  // (16 accumulators at most)
  __m512 acc[kSets][kRows][M];
#pragma GCC unroll 2
  for (int j = 0; j < kSets; ++j)
#pragma GCC unroll 4
    for (int i = 0; i < kRows; ++i)
#pragma GCC unroll 4
      for (int m = 0; m < M; ++m) acc[j][i][m] = _mm512_setzero_ps();
  // Chunk g (inputs 128g ..) into accumulator set j.
  auto chunk = [&](int j, int64_t g) __attribute__((always_inline)) {
    __m512i lo[kRows], hi[kRows];
    visit.Load(g * (kChunk4 / 2), lo, hi);
#pragma GCC unroll 4
    for (int m = 0; m < M; ++m) {
      const int8_t* x = a.xq.data() + (m0 + m) * inp + g * kChunk4;
      const __m512i x_lo = InRegister(_mm512_loadu_si512(x)), x_hi = InRegister(_mm512_loadu_si512(x + 64));
#pragma GCC unroll 4
      for (int i = 0; i < kRows; ++i) {
        const __m512i t = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo[i], x_lo), hi[i], x_hi);
        acc[j % kSets][i][m] =
            _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), _mm512_set1_ps(sd[i][m][g % kWindow]), acc[j % kSets][i][m]);
      }
    }
  };
  for (int64_t g0 = 0; g0 < groups; g0 += kWindow) {
    const int64_t n = std::min(kWindow, groups - g0);
    const __mmask16 mask = n == kWindow ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1);
#pragma GCC unroll 4
    for (int m = 0; m < M; ++m) {
      const __m512 d = _mm512_maskz_loadu_ps(mask, a.span_d.data() + (m0 + m) * groups + g0);
#pragma GCC unroll 4
      for (int i = 0; i < kRows; ++i)
        _mm512_store_ps(sd[i][m], _mm512_mul_ps(_mm512_maskz_loadu_ps(mask, scale[i] + g0), d));
    }
    EvenOddChunks(g0, g0 + n, 1, chunk);
  }
#pragma GCC unroll 4
  for (int m = 0; m < M; ++m) {
    __m512 t[kRows];
#pragma GCC unroll 4
    for (int i = 0; i < kRows; ++i) {
      t[i] = kSets == 2 ? _mm512_add_ps(acc[0][i][m], acc[kSets - 1][i][m]) : acc[0][i][m];
    }
    StoreInt4Rows<kRows>(p, rows, m0 + m, groups, t);
  }
}

// One input row, rows in VisitRows' streaming order (pairs of rows far
// apart): Int4BlockG128's arithmetic in one loop over the pairs, with the
// problem's invariants hoisted. (As separate calls, each pair's setup and
// sums cost about as much as its 7 chunks' products at 896 inputs.)
// In 512-bit vectors, unlike Int8Stream: in 256-bit ones (two loads and
// four vpdpbusd per row and chunk) it streamed alike (InternVL2-1B with
// 4-bit layers, decode at 2500 positions, alternated in one process on the
// Zen 5 VM: 9.37 and 9.53 ms per step against 9.60 and 9.39) but ran half
// as fast from L2 (33 against 70 GB/s on one thread), about one thread's
// share of the memory bandwidth: no headroom.
void Int4StreamG128(const Int4Problem& p, int64_t row_begin, int64_t row_end) {
  constexpr int64_t kWindow = 16;
  const Activations& a = *p.a;
  const int64_t inp = a.inp, groups = inp / kChunk4;
  const int8_t* x = a.xq.data();
  const float* span_d = a.span_d.data();
  const float* gsum = a.gsum.data();
  const __m512i low = _mm512_set1_epi8(0x0F);
  alignas(64) float sd[2][kWindow];
  const bool scales_ahead = groups >= kScaleAheadGroups;
  auto pair = [&](int64_t r0, int64_t r1) __attribute__((always_inline)) {
    const Int4Row row0 = RowOf(p, r0), row1 = RowOf(p, r1);
    if (scales_ahead) {
      PrefetchScalesAhead(p, r0);
      PrefetchScalesAhead(p, r1);
    }
    __m512 acc0[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
    __m512 acc1[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
    auto chunk = [&](int j, int64_t g) __attribute__((always_inline)) {
      const int64_t kb = g * (kChunk4 / 2);
      PrefetchAhead(row0.w, kb, inp / 2, p.w_stride);
      PrefetchAhead(row1.w, kb, inp / 2, p.w_stride);
      const __m512i v0 = InRegister(_mm512_loadu_si512(row0.w + kb));
      const __m512i v1 = InRegister(_mm512_loadu_si512(row1.w + kb));
      const __m512i x_lo = InRegister(_mm512_loadu_si512(x + g * kChunk4));
      const __m512i x_hi = InRegister(_mm512_loadu_si512(x + g * kChunk4 + 64));
      const __m512i t0 =
          _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_and_si512(v0, low), x_lo),
                              _mm512_and_si512(_mm512_srli_epi16(v0, 4), low), x_hi);
      const __m512i t1 =
          _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_and_si512(v1, low), x_lo),
                              _mm512_and_si512(_mm512_srli_epi16(v1, 4), low), x_hi);
      acc0[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t0), _mm512_set1_ps(sd[0][g % kWindow]), acc0[j]);
      acc1[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t1), _mm512_set1_ps(sd[1][g % kWindow]), acc1[j]);
    };
    // The zero points' term (as in Int4Block) starts the second accumulators.
    for (int64_t g0 = 0; g0 < groups; g0 += kWindow) {
      const int64_t n = std::min(kWindow, groups - g0);
      const __mmask16 mask = n == kWindow ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1);
      const __m512 d = _mm512_maskz_loadu_ps(mask, span_d + g0), gs = _mm512_maskz_loadu_ps(mask, gsum + g0);
      _mm512_store_ps(sd[0], _mm512_mul_ps(_mm512_maskz_loadu_ps(mask, row0.scale + g0), d));
      _mm512_store_ps(sd[1], _mm512_mul_ps(_mm512_maskz_loadu_ps(mask, row1.scale + g0), d));
      acc0[1] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, row0.zmin + g0), gs, acc0[1]);
      acc1[1] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, row1.zmin + g0), gs, acc1[1]);
      EvenOddChunks(g0, g0 + n, 1, chunk);
    }
    const __m512 t[2] = {_mm512_add_ps(acc0[0], acc0[1]), _mm512_add_ps(acc1[0], acc1[1])};
    float sums[2];
    ReduceAddRows<2>(t, sums);
    if (p.bias != nullptr) sums[0] += p.bias[r0], sums[1] += p.bias[r1];
    StoreY(p, r0, sums[0]);
    StoreY(p, r1, sums[1]);
  };
  const int64_t half = (row_end - row_begin) / 2;
  for (int64_t i = 0; i < half; ++i) pair(row_begin + i, row_begin + half + i);
  if ((row_end - row_begin) % 2 != 0) {
    const int64_t last = row_end - 1;
    Int4BlockG128<1, 1>(p, &last, 0, groups);
  }
}

template <int kRows, typename P, void (*B1)(const P&, const int64_t*, int64_t),
          void (*B2)(const P&, const int64_t*, int64_t), void (*B3)(const P&, const int64_t*, int64_t),
          void (*B4)(const P&, const int64_t*, int64_t)>
void AllInputs(const P& p, const int64_t* row) {
  int64_t m0 = 0;
  for (; m0 + 4 <= p.a->m; m0 += 4) B4(p, row, m0);
  switch (p.a->m - m0) {
    case 1:
      return B1(p, row, m0);
    case 2:
      return B2(p, row, m0);
    case 3:
      return B3(p, row, m0);
    default:
      return;
  }
}

template <int kRows>
void Int8All(const Int8Problem& p, const int64_t* row) {
  AllInputs<kRows, Int8Problem, Int8Block<kRows, 1>, Int8Block<kRows, 2>, Int8Block<kRows, 3>, Int8Block<kRows, 4>>(
      p, row);
}

// Two input rows at a time at most (the unpacked weight vectors and the
// accumulators fill the 32 registers), but 4 for groups of 128 (16
// accumulators: Int4BlockG128 then keeps one set): the weights unpacked once
// for the 4. With the streaming pairs, alternated in one process, 4 input
// rows, 24 layers' matrices read from memory (2-core Zen 4): the layers'
// products 13.1-13.9 -> 12.8-13.6 ms, 896 x 4864 -4-6%; with 4 adjacent
// rows at 8 and 16 input rows, against two passes of 2: -4 to -11%.
template <int kRows, int kSpan>
void Int4All(const Int4Problem& p, const int64_t* row, int64_t groups) {
  int64_t m0 = 0;
  if (kSpan == 128 && p.group == 128) {
    for (; m0 + 4 <= p.a->m; m0 += 4) Int4BlockG128<kRows, 4>(p, row, m0, groups);
    for (; m0 + 2 <= p.a->m; m0 += 2) Int4BlockG128<kRows, 2>(p, row, m0, groups);
    if (m0 < p.a->m) Int4BlockG128<kRows, 1>(p, row, m0, groups);
    return;
  }
  for (; m0 + 2 <= p.a->m; m0 += 2) Int4Block<kRows, 2, kSpan>(p, row, m0, groups);
  if (m0 < p.a->m) Int4Block<kRows, 1, kSpan>(p, row, m0, groups);
}

template <int kSpan>
void Int4Rows(const Int4Problem& p, int64_t row_begin, int64_t row_end) {
  const int64_t groups = p.a->inp / p.group;  // (one division per call, not per row)
  // Groups of 128 from 3 input rows: 4 adjacent output rows per visit (the
  // activations and window scales loaded once for 4 rows), 4 input rows in
  // one pass (one accumulator set: 16). Alternated in one process against
  // the streaming pairs (2-core Zen 4), 4 input rows, 24 layers' matrices
  // from memory: 896x4864 3.5-3.8 -> 3.1-3.5 ms, 9728x896 6.7-6.9 -> 6.0-6.3;
  // 3 input rows 0 to -10%.
  const bool streaming = kSpan == 128 && p.group == 128 ? p.a->m <= 2 : p.a->m <= 4;
  VisitRows(row_begin, row_end, streaming, [&](const int64_t* rows, int n) {
    n == 4   ? Int4All<4, kSpan>(p, rows, groups)
    : n == 2 ? Int4All<2, kSpan>(p, rows, groups)
             : Int4All<1, kSpan>(p, rows, groups);
  });
}

}  // namespace

// Output rows in row_order.h's order, streaming for up to 4 input rows (one
// group of inputs).
void Int8RowsAvx512Vnni(const Int8Problem& p, int64_t row_begin, int64_t row_end) {
  // (The pair loop for 3 and 4 input rows measured 5-17% slower than
  // Int8Block's visits, for 2 12-22% faster: kernel alone, 896 and 4864
  // inputs.)
  if (p.a->m == 1) return Int8Stream<1>(p, row_begin, row_end);
  if (p.a->m == 2) return Int8Stream<2>(p, row_begin, row_end);
  // From 3 input rows, 4 adjacent output rows per visit (their activations'
  // loads shared by 4 rows, not 2) rather than the streaming pairs:
  // alternated in one process (2-core Zen 4), 4 input rows, matrices from
  // memory: the vocabulary head 5.29-6.07 -> 4.51-4.71 ms, 24 x 896x4864
  // 7.6-8.2 -> 6.7-7.3 ms, 24 x 9728x896 9.7-10.1 -> 7.8-8.0 ms; 3 input rows
  // -8 to -10% but for the head (+-2%).
  VisitRows(row_begin, row_end, /*streaming=*/false, [&](const int64_t* rows, int n) {
    n == 4 ? Int8All<4>(p, rows) : n == 2 ? Int8All<2>(p, rows) : Int8All<1>(p, rows);
  });
}

void Int4RowsAvx512Vnni(const Int4Problem& p, int64_t row_begin, int64_t row_end) {
  if (p.group == 128 && p.a->m == 1) return Int4StreamG128(p, row_begin, row_end);
  Activations::SpanFor(p.group) == 128 ? Int4Rows<128>(p, row_begin, row_end) : Int4Rows<64>(p, row_begin, row_end);
}

namespace {

// 16 fp32 values stored as fp32 or rounded to bf16 (FloatToBf16Bits' bits),
// the first n of them.
__attribute__((always_inline)) inline void StoreDequant(const Dequant& p, int64_t at, __m512 v, __mmask16 n) {
  if (p.out16 == nullptr) return _mm512_mask_storeu_ps(p.out32 + at, n, v);
  _mm256_mask_storeu_epi16(p.out16 + at, n, simd::RoundToBf16x16(v));
}

}  // namespace

// 16 values at a time (groups are multiples of 64: 16 never straddle two),
// the product and the sum as separate instructions (the reference's two
// roundings; GCC contracts _mm512_mul_ps + _mm512_add_ps into an FMA unless
// the product is pinned, InRegister), the row's last in % 16 values masked.
void DequantRowsAvx512(const Dequant& p, int64_t row_begin, int64_t row_end) {
  const __m128i low = _mm_set1_epi8(0x0F);
  for (int64_t r = row_begin; r < row_end; ++r) {
    const int64_t o = (r - row_begin) * p.in;
    for (int64_t k = 0; k < p.in; k += 16) {
      const __mmask16 n = p.in - k >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (p.in - k)) - 1);
      if (p.group == 0) {
        const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p.w8 + r * p.inp + k));
        StoreDequant(p, o + k, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)), _mm512_set1_ps(p.scale[r])),
                     n);
      } else {
        // (The padded row holds whole chunks: these 16 bytes exist.)
        const int64_t c = k / kChunk4, j = k % kChunk4, g = r * p.s_stride + k / p.group;
        __m128i q =
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(p.w4 + r * p.w_stride + c * (kChunk4 / 2) + j % 64));
        q = _mm_and_si128(j < 64 ? q : _mm_srli_epi16(q, 4), low);
        const __m512 product = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(q)), _mm512_set1_ps(p.scale[g]));
        StoreDequant(p, o + k, _mm512_add_ps(InRegister(product), _mm512_set1_ps(p.zmin[g])), n);
      }
    }
  }
}

bool CpuHasAvx512Vnni() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("fma");
  }();
  return has;
}

}  // namespace internvl::llm::quant
