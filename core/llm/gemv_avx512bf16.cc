// AVX-512-BF16 matrix-vector kernels (this file alone is compiled with
// -mavx512f -mavx512bw -mavx512vl -mavx512bf16 -mfma; gemv.cc checks the CPU
// at run time).
// For bf16 weights AND bf16 inputs (a model computed in bf16 on a CPU with
// native bf16): one vdpbf16ps multiplies 32 bf16 pairs and accumulates them
// into 16 fp32 lanes, so a 64-byte weight load feeds one instruction per
// input row. 4 weight rows x 4 input rows at a time (16 accumulators); more
// input rows re-read the 4 weight rows from L1, so the weights stream from
// memory once whatever M. (8 weight rows x 2 inputs measured slower in the
// server: 115 against 136 tokens/s at 8 streams.)
// Arithmetic: products of bf16 values (exact in fp32), summed in fp32, as a
// native bf16 GEMM does.
// GCC 12's AVX-512 headers leave lanes undefined on purpose in casts and
// conversions, which -Wmaybe-uninitialized reports inside the intrinsics.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>
#include <limits>

#include "core/llm/gemv_kernels.h"
#include "core/llm/row_order.h"
#include "core/llm/simd_avx512.h"

namespace internvl::llm::gemv {
namespace {

inline float Bf16ToFloat(uint16_t v) {
  const uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  __builtin_memcpy(&f, &bits, sizeof(f));
  return f;
}

using simd::ReduceAdd;
using simd::ReduceAddColumn;

// The 16 sums of Block<4, 4>'s accumulators (adjacent rows r..r+3, input
// rows m0..m0+3), their biases added, stored: the bits of the scalar ending
// below (ReduceAddColumn's adds in its order, AddBias, StoreY), in vectors
// (simd_avx512.h).
inline void Store4x4(const Problem& p, const __m512 (&acc)[4][4], int64_t r, int64_t m0) {
  __m512 sums = simd::Sums4x4(acc);
  if (p.bias != nullptr) {
    sums = _mm512_add_ps(sums, simd::PerRow4x4(_mm_loadu_ps(p.bias + r)));
  } else if (p.bias_bf16 != nullptr) {
    const __m128i b16 = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p.bias_bf16 + r));
    sums = _mm512_add_ps(sums, simd::PerRow4x4(_mm_castsi128_ps(_mm_slli_epi32(_mm_cvtepu16_epi32(b16), 16))));
  }
  simd::Store4x4Lanes(p, r, m0, sums);
}

// Dot products of kRows weight rows (at rows[i]) with M input rows from m0.
// The rows need not be adjacent: see RowsAvx512Bf16.
template <int kRows, int M>
inline void Block(const Problem& p, const int64_t* rows, int64_t m0) {
  const int64_t in = p.in;
  const int64_t vec_end = in & ~int64_t{31};
  const uint16_t* x = p.x_bf16;
  const uint16_t* w[kRows];
#pragma GCC unroll 8
  for (int i = 0; i < kRows; ++i) w[i] = static_cast<const uint16_t*>(p.w) + rows[i] * in;
  __m512 acc[kRows][M];
#pragma GCC unroll 8
  for (int i = 0; i < kRows; ++i) {
#pragma GCC unroll 4
    for (int m = 0; m < M; ++m) acc[i][m] = _mm512_setzero_ps();
  }
  // Adjacent rows (more input rows than one streaming group: batched
  // decode steps, a pass over the 4 rows per group of 4 inputs): the passes
  // prefetch the next 4 rows, which follow these in memory, pass j its lines
  // j, j + passes, ... spread over its loop (4 lines a step in all), as the
  // AVX2 kernel prefetches one block ahead. Without it the loads waited on
  // memory: 8 input rows, matrices read from memory, calls alternated
  // (bench_gemv --batch=8): gate|up 1.07 -> 0.73 ms, down 0.41 -> 0.34,
  // q|k|v 0.14 -> 0.10, the head 12.3 -> 7.8 with the first pass alone
  // prefetching (2 groups ahead alike or slower); spread over the passes,
  // 16 input rows: gate|up 0.90 -> 0.65 ms, the head 14.2 -> 11.4, 8: alike
  // or better. Rows of more than 2048 inputs (the down projection's 4864:
  // 39 KB a group) prefetch in the first pass only: spread, they came 10-18%
  // slower at 12 and 16 input rows (their inputs stream through L1 with
  // each pass). Up to 4 input rows take the streaming order, which
  // prefetches its own way; the last group has no next one in the matrix.
  const bool adjacent = rows[kRows - 1] == rows[0] + kRows - 1;
  const bool spread = kRows * in * 2 <= (16 << 10);
  const int64_t pass = m0 / 4, passes = spread ? (p.m + 3) / 4 : 1;
  const bool prefetch = kRows == 4 && pass < passes && adjacent && rows[0] + 2 * kRows <= p.out;
  const char* ahead = reinterpret_cast<const char*>(w[0] + kRows * in);
  const char* pf = ahead + 64 * pass;
  const char* const pf_end = ahead + kRows * in * 2;
  const int64_t per_step = (kRows + passes - 1) / passes, pf_stride = 64 * passes;
  for (int64_t k = 0; k < vec_end; k += 32) {
    if (prefetch) {
      for (int64_t j = 0; j < per_step && pf < pf_end; ++j, pf += pf_stride) _mm_prefetch(pf, _MM_HINT_T0);
    }
    __m512bh xv[M];
#pragma GCC unroll 4
    for (int m = 0; m < M; ++m) xv[m] = (__m512bh)_mm512_loadu_si512(x + (m0 + m) * in + k);
#pragma GCC unroll 8
    for (int i = 0; i < kRows; ++i) {
      if (kRows <= 2) PrefetchAhead(w[i], 2 * k, 2 * in, 2 * in);  // (streaming: row_order.h)
      const __m512bh wv = (__m512bh)_mm512_loadu_si512(w[i] + k);
#pragma GCC unroll 4
      for (int m = 0; m < M; ++m) acc[i][m] = _mm512_dpbf16_ps(acc[i][m], wv, xv[m]);
    }
  }
  if constexpr (kRows == 4 && M == 4) {
    if (adjacent && vec_end == in) return Store4x4(p, acc, rows[0], m0);
  }
#pragma GCC unroll 4
  for (int m = 0; m < M; ++m) {
    float sums[kRows];
    ReduceAddColumn(acc, m, sums);
    for (int i = 0; i < kRows; ++i) {
      float s = sums[i];
      for (int64_t k = vec_end; k < in; ++k) s += Bf16ToFloat(w[i][k]) * Bf16ToFloat(x[(m0 + m) * in + k]);
      s = AddBias(p, rows[i], s);
      StoreY(p, (m0 + m) * p.out + rows[i], s);
    }
  }
}

// One input row, rows in VisitRows' streaming order (pairs of rows far
// apart) in 256-bit vectors: per row two accumulators (the halves of each
// 64-byte line), one vdpbf16ps per 16 weights. Block<2, 1>'s 512-bit vectors
// streamed slower on the 2-core Zen 5 VM: InternVL2-1B bf16, decode at 2500
// positions, alternated in one process: 18.25 -> 17.59 and 24.69 -> 22.69 ms
// per step (as the int8 stream kernel, quant_avx512vnni.cc).
void StreamOneInput(const Problem& p, int64_t row_begin, int64_t row_end) {
  const int64_t in = p.in;
  const int64_t vec_end = in & ~int64_t{31};
  const uint16_t* x = p.x_bf16;
  auto load = [](const uint16_t* v) { return (__m256bh)_mm256_loadu_si256(reinterpret_cast<const __m256i*>(v)); };
  auto pair = [&](int64_t r0, int64_t r1) __attribute__((always_inline)) {
    const uint16_t* w0 = static_cast<const uint16_t*>(p.w) + r0 * in;
    const uint16_t* w1 = static_cast<const uint16_t*>(p.w) + r1 * in;
    __m256 acc0[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    __m256 acc1[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int64_t k = 0; k < vec_end; k += 32) {
      PrefetchAhead(w0, 2 * k, 2 * in, 2 * in);
      PrefetchAhead(w1, 2 * k, 2 * in, 2 * in);
#pragma GCC unroll 2
      for (int j = 0; j < 2; ++j) {
        const __m256bh xv = load(x + k + 16 * j);
        acc0[j] = _mm256_dpbf16_ps(acc0[j], load(w0 + k + 16 * j), xv);
        acc1[j] = _mm256_dpbf16_ps(acc1[j], load(w1 + k + 16 * j), xv);
      }
    }
    float s0 = simd::HorizontalSum8(_mm256_add_ps(acc0[0], acc0[1]));
    float s1 = simd::HorizontalSum8(_mm256_add_ps(acc1[0], acc1[1]));
    for (int64_t k = vec_end; k < in; ++k) {
      s0 += Bf16ToFloat(w0[k]) * Bf16ToFloat(x[k]);
      s1 += Bf16ToFloat(w1[k]) * Bf16ToFloat(x[k]);
    }
    StoreY(p, r0, AddBias(p, r0, s0));
    StoreY(p, r1, AddBias(p, r1, s1));
  };
  const int64_t half = (row_end - row_begin) / 2;
  for (int64_t i = 0; i < half; ++i) pair(row_begin + i, row_begin + half + i);
  if ((row_end - row_begin) % 2 != 0) {
    const int64_t last = row_end - 1;
    Block<1, 1>(p, &last, 0);
  }
}

template <int kRows>
inline void AllInputs(const Problem& p, const int64_t* rows) {
  int64_t m0 = 0;
  for (; m0 + 4 <= p.m; m0 += 4) Block<kRows, 4>(p, rows, m0);
  switch (p.m - m0) {
    case 1:
      return Block<kRows, 1>(p, rows, m0);
    case 2:
      return Block<kRows, 2>(p, rows, m0);
    case 3:
      return Block<kRows, 3>(p, rows, m0);
    default:
      return;
  }
}

// Lane sums of four vectors whose 128-bit block j holds partial sums of
// four outputs (block j, lane t of c[i]: a piece of output 4i + t): output
// o in lane o, blocks (0 + 1) + (2 + 3).
__attribute__((always_inline)) inline __m512 SumBlocks4(__m512 c0, __m512 c1, __m512 c2, __m512 c3) {
  const __m512 e01 = _mm512_add_ps(_mm512_shuffle_f32x4(c0, c1, 0x88), _mm512_shuffle_f32x4(c0, c1, 0xDD));
  const __m512 e23 = _mm512_add_ps(_mm512_shuffle_f32x4(c2, c3, 0x88), _mm512_shuffle_f32x4(c2, c3, 0xDD));
  return _mm512_add_ps(_mm512_shuffle_f32x4(e01, e23, 0x88), _mm512_shuffle_f32x4(e01, e23, 0xDD));
}

// Sums of 16 vectors' lanes: lane i of the result = sum of a[i]'s 16 lanes
// (unpack/add within 128-bit lanes, then across them). Inlined with its
// loops unrolled: otherwise the caller's 16 accumulators went through the
// stack (a store per product in the scores loop).
__attribute__((always_inline)) inline __m512 HorizontalSums16(const __m512* a) {
  __m512 b[8], c[4];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    b[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]), _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
  }
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    const __m512d x = _mm512_castps_pd(b[2 * i]), y = _mm512_castps_pd(b[2 * i + 1]);
    c[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
  }
  // c[i]'s 128-bit lane j holds partial sums of keys 4i..4i+3.
  return SumBlocks4(c[0], c[1], c[2], c[3]);
}

// Dot product of bf16 q and one bf16 key row (dim % 32 == 0), 16 lanes.
inline __m512 KeyDot(const uint16_t* q, const uint16_t* k, int64_t dim) {
  __m512 acc = _mm512_setzero_ps();
  for (int64_t d = 0; d < dim; d += 32) {
    acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_loadu_si512(k + d), (__m512bh)_mm512_loadu_si512(q + d));
  }
  return acc;
}

// Software prefetch of [p, p + bytes) into L1 (_MM_HINT_T0) or L2 (T1).
template <int kHint>
inline void PrefetchBytes(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t i = 0; i < bytes; i += 64) _mm_prefetch(c + i, static_cast<_mm_hint>(kHint));
}

// Scores divided by scale, or multiplied by its reciprocal where that gives
// the same bits (ScaleIsPowerOfTwo; the store after vdivps held ~14% of the
// kernel's samples with the keys in cache, though the whole attention's gain
// stayed within a Zen 4 VM's noise).
inline __m512 ApplyScale(__m512 s, __m512 scale_v, __m512 inv_v, bool pow2) {
  return pow2 ? _mm512_mul_ps(s, inv_v) : _mm512_div_ps(s, scale_v);
}

inline uint16_t RoundToBf16(float f) {
  uint32_t bits;
  __builtin_memcpy(&bits, &f, sizeof(bits));
  bits += 0x7FFF + ((bits >> 16) & 1);  // round to nearest even (finite values)
  return static_cast<uint16_t>(bits >> 16);
}

}  // namespace

namespace {

// Scores in tiles of 16 keys, the keys in the lanes, for G query heads at
// once (dim = 32 * C). Per 4 keys and 32 dims, one 4x4 transpose of 32-bit
// words within each 128-bit block (8 unpacks) makes U_e: block L, lane j =
// key j's bf16 pair 4L + e. vdpbf16ps against the query's pairs 4L + e
// (spread once per call: SpreadQuery) adds to block L, lane j of key j's
// accumulator; SumBlocks4 then adds the blocks, 4 keys' accumulators at a
// time, into one vector of 16 keys. Each key row is loaded once for the
// group, and a head's 16 scores cost 3 shuffles and 3 adds after the
// products, where one reduction tree per 16 keys and head (HorizontalSums16:
// 45 instructions) cost more than the products themselves.
// The order of the sums is fixed (pairs 4L + e in order e, then 32-dim chunk
// c, per block; blocks as SumBlocks4), whatever G.
// The query's pairs per chunk c and e: qp[(c * 4 + e)] block L = pairs 16c + 4L + e.
template <int C>
inline void SpreadQuery(const uint16_t* q, __m512i* qp) {
  const __m512i base = _mm512_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 8, 12, 12, 12, 12);
#pragma GCC unroll 4
  for (int c = 0; c < C; ++c) {
    const __m512i chunk = _mm512_loadu_si512(q + 32 * c);
#pragma GCC unroll 4
    for (int e = 0; e < 4; ++e) {
      _mm512_store_si512(qp + c * 4 + e, _mm512_permutexvar_epi32(_mm512_add_epi32(base, _mm512_set1_epi32(e)), chunk));
    }
  }
}

// Scores (unscaled) of the 16 keys k[0, 16) (rows of 32 * C bf16) for G
// heads (spread queries at qp + g * 4C): out[g] lane i = dot(q_g, k_i).
// Lines that ScoreTile prefetches while it computes, each a run of 16 rows of
// 32 * C bf16 (16C lines), or null: spread over its 8C steps, 2 lines of each
// per step, so that the misses overlap the products (issued together per
// block, the prefetches stalled once the core's outstanding misses were
// full: ~22% of the kernel's samples sat on them).
struct TilePrefetch {
  const char* keys_l1;    // into L1
  const char* keys_l2;    // into L2
  const char* values_l2;  // into L2
};

template <int G, int C>
__attribute__((always_inline)) inline void ScoreTile(const __m512i* qp, const uint16_t* k, __m512* out,
                                                     const TilePrefetch& pf) {
  constexpr int64_t dim = 32 * C;
  __m512 pairs[2][G];  // SumBlocks4's first stage, for keys 0-7 and 8-15
#pragma GCC unroll 2
  for (int half = 0; half < 2; ++half) {
    // The spread query read afresh by each half (hidden from GCC as in
    // ScoresTiles: otherwise it kept the first half's 4GC loads for the
    // second by storing each to the stack, one store per two products).
    const __m512i* q = qp;
    __asm__("" : "+r"(q));
    __m512 acc[2][G];
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) acc[0][g] = acc[1][g] = _mm512_setzero_ps();
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) {
      // Keys 8 * half + 4a + j (a = 0, 1) in block L, lane j of u[a][e].
      __m512i u[2][4];
#pragma GCC unroll 2
      for (int a = 0; a < 2; ++a) {
        const uint16_t* rows = k + (8 * half + 4 * a) * dim + 32 * c;
        const __m512i r0 = _mm512_loadu_si512(rows), r1 = _mm512_loadu_si512(rows + dim);
        const __m512i r2 = _mm512_loadu_si512(rows + 2 * dim), r3 = _mm512_loadu_si512(rows + 3 * dim);
        const __m512i t0 = _mm512_unpacklo_epi32(r0, r1), t1 = _mm512_unpackhi_epi32(r0, r1);
        const __m512i t2 = _mm512_unpacklo_epi32(r2, r3), t3 = _mm512_unpackhi_epi32(r2, r3);
        u[a][0] = _mm512_unpacklo_epi64(t0, t2);
        u[a][1] = _mm512_unpackhi_epi64(t0, t2);
        u[a][2] = _mm512_unpacklo_epi64(t1, t3);
        u[a][3] = _mm512_unpackhi_epi64(t1, t3);
      }
      // Each spread query vector loaded once for both groups of 4 keys.
#pragma GCC unroll 4
      for (int e = 0; e < 4; ++e) {
        const int64_t line = ((half * C + c) * 4 + e) * 128;
        if (pf.keys_l1 != nullptr) {
          _mm_prefetch(pf.keys_l1 + line, _MM_HINT_T0);
          _mm_prefetch(pf.keys_l1 + line + 64, _MM_HINT_T0);
        }
        if (pf.keys_l2 != nullptr) {
          _mm_prefetch(pf.keys_l2 + line, _MM_HINT_T1);
          _mm_prefetch(pf.keys_l2 + line + 64, _MM_HINT_T1);
        }
        if (pf.values_l2 != nullptr) {
          _mm_prefetch(pf.values_l2 + line, _MM_HINT_T1);
          _mm_prefetch(pf.values_l2 + line + 64, _MM_HINT_T1);
        }
#pragma GCC unroll 8
        for (int g = 0; g < G; ++g) {
          const __m512bh qv = (__m512bh)_mm512_load_si512(q + (g * C + c) * 4 + e);
          acc[0][g] = _mm512_dpbf16_ps(acc[0][g], (__m512bh)u[0][e], qv);
          acc[1][g] = _mm512_dpbf16_ps(acc[1][g], (__m512bh)u[1][e], qv);
        }
      }
    }
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) {
      pairs[half][g] = _mm512_add_ps(_mm512_shuffle_f32x4(acc[0][g], acc[1][g], 0x88),
                                     _mm512_shuffle_f32x4(acc[0][g], acc[1][g], 0xDD));
    }
  }
#pragma GCC unroll 8
  for (int g = 0; g < G; ++g) {
    out[g] = _mm512_add_ps(_mm512_shuffle_f32x4(pairs[0][g], pairs[1][g], 0x88),
                           _mm512_shuffle_f32x4(pairs[0][g], pairs[1][g], 0xDD));
  }
}

// How far ahead the tiled scorer prefetches its keys, in tiles of 16: into
// L1 2 tiles ahead, into L2 6 ahead (its values into L2 as it scores their
// keys, for the values step that follows). Spread over the products
// (TilePrefetch), alternated in one process (24 layers at 2500 positions from
// memory, 2 threads, Zen 4, medians of 60): 1.65-1.86 ms against 1.97-2.23
// for the earlier 2 blocks ahead into L1 issued per block; the L2 distance
// 10 measured as 6, 12 (with L1 4) 5% slower.
constexpr int64_t kKeyL1Tiles = 2, kKeyL2Tiles = 6;

// SegmentScoresGroupBf16Avx512 for G heads, dim = 32 * C (any bs, len).
template <int G, int C>
void ScoresTiles(const uint16_t* q, const uint16_t* const* blocks, int64_t bs, int64_t len, float scale, float* scores,
                 int64_t stride, const uint16_t* const* values) {
  constexpr int64_t dim = 32 * C;
  const __m512 scale_v = _mm512_set1_ps(scale), inv_v = _mm512_set1_ps(1.0f / scale);
  const bool pow2 = ScaleIsPowerOfTwo(scale);
  alignas(64) __m512i qp[G * C * 4];
#pragma GCC unroll 8
  for (int g = 0; g < G; ++g) SpreadQuery<C>(q + g * dim, qp + g * C * 4);
  // A block's last keys short of 16, zero padded.
  alignas(64) uint16_t tail[16 * dim];
  // Rows [r, r + 16) of the keys or values when they are one run (within a
  // block and the segment), else null (blocks of other than multiples of 16
  // rows: not prefetched).
  auto run16 = [&](const uint16_t* const* table, int64_t r) -> const char* {
    if (table == nullptr || r + 16 > len || r % bs + 16 > bs) return nullptr;
    return reinterpret_cast<const char*>(table[r / bs] + (r % bs) * dim);
  };
  const int64_t tile_bytes = 16 * dim * 2;
  for (int64_t r = 0; r < kKeyL2Tiles * 16; r += 16) {
    if (const char* run = run16(blocks, r)) {
      r < kKeyL1Tiles * 16 ? PrefetchBytes<_MM_HINT_T0>(run, tile_bytes) : PrefetchBytes<_MM_HINT_T1>(run, tile_bytes);
    }
  }
  for (int64_t b = 0; b * bs < len; ++b) {
    const int64_t nk = std::min(bs, len - b * bs);
    for (int64_t t = 0; t < nk; t += 16) {
      const int64_t n = std::min<int64_t>(16, nk - t);
      const uint16_t* k = blocks[b] + t * dim;
      if (n < 16) {
        std::copy(k, k + n * dim, tail);
        std::fill(tail + n * dim, tail + 16 * dim, uint16_t{0});
        k = tail;
      }
      // (The spread query is read from L1 by each product: hidden from GCC,
      // which otherwise hoisted its 4GC loads out of this loop and spilled
      // them to the stack, two moves per product.)
      const __m512i* q_l1 = qp;
      __asm__("" : "+r"(q_l1));
      __m512 s[G];
      const int64_t r = b * bs + t;
      const TilePrefetch pf = {run16(blocks, r + kKeyL1Tiles * 16), run16(blocks, r + kKeyL2Tiles * 16),
                               run16(values, r)};
      ScoreTile<G, C>(q_l1, k, s, pf);
      const __mmask16 m = static_cast<__mmask16>((1u << n) - 1);
#pragma GCC unroll 8
      for (int g = 0; g < G; ++g) {
        _mm512_mask_storeu_ps(scores + g * stride + b * bs + t, m, ApplyScale(s[g], scale_v, inv_v, pow2));
      }
    }
  }
}

using ScoresFn = void (*)(const uint16_t*, const uint16_t* const*, int64_t, int64_t, float, float*, int64_t,
                          const uint16_t* const*);

template <int C>
constexpr ScoresFn kScoresTiles[8] = {ScoresTiles<1, C>, ScoresTiles<2, C>, ScoresTiles<3, C>, ScoresTiles<4, C>,
                                      ScoresTiles<5, C>, ScoresTiles<6, C>, ScoresTiles<7, C>, ScoresTiles<8, C>};

// The tiled kernel for `heads` <= 8 heads of dim, or null (dims other than 32-128).
ScoresFn TiledScores(int64_t heads, int64_t dim) {
  switch (dim) {
    case 32:
      return kScoresTiles<1>[heads - 1];
    case 64:
      return kScoresTiles<2>[heads - 1];
    case 96:
      return kScoresTiles<3>[heads - 1];
    case 128:
      return kScoresTiles<4>[heads - 1];
    default:
      return nullptr;
  }
}

// Other dims (% 32 == 0): one key row at a time (16 accumulators, one
// reduction tree per 16 keys).
void ScoresAnyDim(const uint16_t* q, const uint16_t* k, int64_t len, int64_t dim, float scale, float* scores) {
  const __m512 scale_v = _mm512_set1_ps(scale), inv_v = _mm512_set1_ps(1.0f / scale);
  const bool pow2 = ScaleIsPowerOfTwo(scale);
  int64_t l = 0;
  for (; l + 16 <= len; l += 16) {
    __m512 a[16];
    for (int i = 0; i < 16; ++i) a[i] = KeyDot(q, k + (l + i) * dim, dim);
    _mm512_storeu_ps(scores + l, ApplyScale(HorizontalSums16(a), scale_v, inv_v, pow2));
  }
  for (; l < len; ++l) scores[l] = ReduceAdd(KeyDot(q, k + l * dim, dim)) / scale;
}

}  // namespace

void SegmentScoresBf16Avx512(const uint16_t* q, const uint16_t* k, int64_t len, int64_t dim, float scale,
                             float* scores) {
  if (const ScoresFn tiles = TiledScores(1, dim)) return tiles(q, &k, len, len, scale, scores, 0, nullptr);
  ScoresAnyDim(q, k, len, dim, scale, scores);
}

void SegmentScoresGroupBf16Avx512(const uint16_t* q, int64_t heads, const uint16_t* const* blocks, int64_t bs,
                                  int64_t len, int64_t dim, float scale, float* scores, int64_t stride,
                                  const uint16_t* const* values) {
  for (int64_t h0 = 0; h0 < heads; h0 += 8) {
    const int64_t g = std::min<int64_t>(8, heads - h0);
    if (const ScoresFn tiles = TiledScores(g, dim)) {
      tiles(q + h0 * dim, blocks, bs, len, scale, scores + h0 * stride, stride, values);
      continue;
    }
    for (int64_t h = h0; h < h0 + g; ++h) {
      for (int64_t b = 0; b * bs < len; ++b) {
        ScoresAnyDim(q + h * dim, blocks[b], std::min(bs, len - b * bs), dim, scale, scores + h * stride + b * bs);
      }
    }
  }
}

Segment SegmentSoftmaxAvx512(float* scores, int64_t len) {
  // Lanes past len read as -inf (e^-inf = 0: no weight, not stored).
  const __m512 ninf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  auto mask = [len](int64_t l) {
    return len - l >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (len - l)) - 1);
  };
  __m512 m = ninf;
  for (int64_t l = 0; l < len; l += 16) m = _mm512_max_ps(m, _mm512_mask_loadu_ps(ninf, mask(l), scores + l));
  Segment seg;
  seg.max = _mm512_reduce_max_ps(m);  // (exact in any order)
  const __m512 mv = _mm512_set1_ps(seg.max);
  __m512 sv = _mm512_setzero_ps();
  for (int64_t l = 0; l < len; l += 16) {
    const __mmask16 k = mask(l);
    const __m512 e = simd::ExpNonPositiveAvx512(_mm512_sub_ps(_mm512_mask_loadu_ps(ninf, k, scores + l), mv));
    _mm512_mask_storeu_ps(scores + l, k, e);
    sv = _mm512_add_ps(sv, e);
  }
  seg.sum = ReduceAdd(sv);
  return seg;
}

void SegmentValuesBf16Avx512(const float* probs, const uint16_t* v, int64_t len, int64_t dim, float* out) {
  // Keys in pairs: unpacking two value rows interleaves their elements, so
  // each 32-bit lane holds (v[l][d], v[l+1][d]) and one vdpbf16ps against
  // (p[l], p[l+1]) adds both products into dimension d's lane. Within each
  // 128-bit lane the unpacks order dimensions 0-3 (lo) and 4-7 (hi) of its 8.
  for (int64_t d0 = 0; d0 < dim; d0 += 32) {
    __m512 lo = _mm512_setzero_ps(), hi = _mm512_setzero_ps();
    int64_t l = 0;
    for (; l + 2 <= len; l += 2) {
      const uint32_t pair =
          static_cast<uint32_t>(RoundToBf16(probs[l])) | (static_cast<uint32_t>(RoundToBf16(probs[l + 1])) << 16);
      const __m512bh pv = (__m512bh)_mm512_set1_epi32(static_cast<int>(pair));
      const __m512i a = _mm512_loadu_si512(v + l * dim + d0), b = _mm512_loadu_si512(v + (l + 1) * dim + d0);
      lo = _mm512_dpbf16_ps(lo, (__m512bh)_mm512_unpacklo_epi16(a, b), pv);
      hi = _mm512_dpbf16_ps(hi, (__m512bh)_mm512_unpackhi_epi16(a, b), pv);
    }
    if (l < len) {
      const __m512bh pv = (__m512bh)_mm512_set1_epi32(static_cast<int>(RoundToBf16(probs[l])));
      const __m512i a = _mm512_loadu_si512(v + l * dim + d0), z = _mm512_setzero_si512();
      lo = _mm512_dpbf16_ps(lo, (__m512bh)_mm512_unpacklo_epi16(a, z), pv);
      hi = _mm512_dpbf16_ps(hi, (__m512bh)_mm512_unpackhi_epi16(a, z), pv);
    }
    alignas(64) float tl[16], th[16];
    _mm512_store_ps(tl, lo);
    _mm512_store_ps(th, hi);
    for (int lane = 0; lane < 4; ++lane) {
      for (int j = 0; j < 4; ++j) {
        out[d0 + 8 * lane + j] = tl[4 * lane + j];
        out[d0 + 8 * lane + 4 + j] = th[4 * lane + j];
      }
    }
  }
}

namespace {

// kMaxKeys probabilities of up to 8 heads, rounded to bf16 (consecutive keys
// pair up in 32-bit words, zero padded to an even count).
constexpr int64_t kMaxKeys = kMaxValuesGroupKeysBf16Avx512;
constexpr int kMaxGroup = 8;
// How far ahead ValuesGroup prefetches its rows: 4 blocks measured 10-15%
// less time for the whole attention than none, 2 blocks 5% (bench_gemv, 24
// layers at 2500 positions, alternated in one process on a Zen 4).
constexpr int64_t kValuesPrefetchBlocks = 4;

// Rounds probs[0, len) to bf16 bits (to nearest even) into dst,
// zero-padding to a multiple of 16.
void RoundProbs(const float* probs, int64_t len, uint16_t* dst) {
  for (int64_t l = 0; l < len; l += 16) {
    const __mmask16 m = len - l >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (len - l)) - 1);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + l), simd::RoundToBf16x16(_mm512_maskz_loadu_ps(m, probs + l)));
  }
}

template <int G>
void ValuesGroup(const uint16_t (*pb)[kMaxKeys + 16], const uint16_t* const* blocks, int64_t bs, int64_t len,
                 int64_t dim, float* out, int64_t out_stride) {
  // After the unpacks, 128-bit lane k of `lo` holds dimensions 8k..8k+3 and
  // of `hi` 8k+4..8k+7 (of the 32 at d0): these indexes put them in order.
  const __m512i first = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
  const __m512i second = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
  for (int64_t d0 = 0; d0 < dim; d0 += 32) {
    // Unrolled so that the 2 x G accumulators stay in registers.
    __m512 lo[G], hi[G];
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) lo[g] = hi[g] = _mm512_setzero_ps();
    // Block by block (bs is even), pairs within a block: no division per
    // pair to find its row.
    for (int64_t b0 = 0; b0 < len; b0 += bs) {
      const uint16_t* block = blocks[b0 / bs] + d0;
      const int64_t nk = std::min(bs, len - b0);
      // The rows' lines this pass reads, kValuesPrefetchBlocks blocks ahead,
      // into L1 (the loads otherwise waited on memory: ~80% of the kernel's
      // samples sat on them).
      const int64_t ahead = b0 + kValuesPrefetchBlocks * bs;
      if (ahead < len) {
        const uint16_t* next = blocks[ahead / bs] + d0;
        const int64_t rows = std::min(bs, len - ahead);
        for (int64_t r = 0; r < rows; ++r) _mm_prefetch(reinterpret_cast<const char*>(next + r * dim), _MM_HINT_T0);
      }
      for (int64_t i = 0; i < nk; i += 2) {
        const uint16_t* row = block + i * dim;
        const __m512i a = _mm512_loadu_si512(row);
        const __m512i b = i + 1 < nk ? _mm512_loadu_si512(row + dim) : _mm512_setzero_si512();
        const __m512bh ul = (__m512bh)_mm512_unpacklo_epi16(a, b), uh = (__m512bh)_mm512_unpackhi_epi16(a, b);
#pragma GCC unroll 8
        for (int g = 0; g < G; ++g) {
          int32_t pair;
          __builtin_memcpy(&pair, pb[g] + b0 + i, sizeof(pair));
          const __m512bh pv = (__m512bh)_mm512_set1_epi32(pair);
          lo[g] = _mm512_dpbf16_ps(lo[g], ul, pv);
          hi[g] = _mm512_dpbf16_ps(hi[g], uh, pv);
        }
      }
    }
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) {
      float* o = out + g * out_stride + d0;
      _mm512_storeu_ps(o, _mm512_permutex2var_ps(lo[g], first, hi[g]));
      _mm512_storeu_ps(o + 16, _mm512_permutex2var_ps(lo[g], second, hi[g]));
    }
  }
}

}  // namespace

void SegmentValuesGroupBf16Avx512(const float* probs, int64_t probs_stride, int64_t heads,
                                  const uint16_t* const* blocks, int64_t bs, int64_t len, int64_t dim, float* out,
                                  int64_t out_stride) {
  alignas(64) uint16_t pb[kMaxGroup][kMaxKeys + 16];
  for (int64_t h0 = 0; h0 < heads; h0 += kMaxGroup) {
    const int g = static_cast<int>(std::min<int64_t>(kMaxGroup, heads - h0));
    for (int i = 0; i < g; ++i) RoundProbs(probs + (h0 + i) * probs_stride, len, pb[i]);
    float* o = out + h0 * out_stride;
    using GroupFn =
        void (*)(const uint16_t(*)[kMaxKeys + 16], const uint16_t* const*, int64_t, int64_t, int64_t, float*, int64_t);
    static constexpr GroupFn kGroups[kMaxGroup] = {ValuesGroup<1>, ValuesGroup<2>, ValuesGroup<3>, ValuesGroup<4>,
                                                   ValuesGroup<5>, ValuesGroup<6>, ValuesGroup<7>, ValuesGroup<8>};
    kGroups[g - 1](pb, blocks, bs, len, dim, o, out_stride);
  }
}

// Output rows in row_order.h's order, streaming for up to 4 inputs (one
// group of 4 x kRows accumulators; one input: StreamOneInput).
void RowsAvx512Bf16(const Problem& p, int64_t row_begin, int64_t row_end) {
  if (p.m == 1) return StreamOneInput(p, row_begin, row_end);
  VisitRows(row_begin, row_end, p.m <= 4, [&](const int64_t* rows, int n) {
    n == 4 ? AllInputs<4>(p, rows) : n == 2 ? AllInputs<2>(p, rows) : AllInputs<1>(p, rows);
  });
}

}  // namespace internvl::llm::gemv
