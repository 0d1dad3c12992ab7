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
// GCC 12's AVX-512 headers leave lanes undefined on purpose in casts and
// conversions, which -Wmaybe-uninitialized reports inside the intrinsics.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>

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
  for (int64_t k = 0; k < vec_end; k += 32) {
    __m512bh xv[M];
#pragma GCC unroll 4
    for (int m = 0; m < M; ++m) xv[m] = (__m512bh)_mm512_loadu_si512(x + (m0 + m) * in + k);
#pragma GCC unroll 8
    for (int i = 0; i < kRows; ++i) {
      const __m512bh wv = (__m512bh)_mm512_loadu_si512(w[i] + k);
#pragma GCC unroll 4
      for (int m = 0; m < M; ++m) acc[i][m] = _mm512_dpbf16_ps(acc[i][m], wv, xv[m]);
    }
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
  const __m512 e01 = _mm512_add_ps(_mm512_shuffle_f32x4(c[0], c[1], 0x88), _mm512_shuffle_f32x4(c[0], c[1], 0xDD));
  const __m512 e23 = _mm512_add_ps(_mm512_shuffle_f32x4(c[2], c[3], 0x88), _mm512_shuffle_f32x4(c[2], c[3], 0xDD));
  return _mm512_add_ps(_mm512_shuffle_f32x4(e01, e23, 0x88), _mm512_shuffle_f32x4(e01, e23, 0xDD));
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

// 16 keys at a time, dim = 32 * kChunks known at compile time: the 16
// accumulators stay in registers (a runtime dim left GCC storing them to the
// stack on every product: 3x slower).
template <int kChunks>
void ScoresFixedDim(const uint16_t* q, const uint16_t* k, int64_t len, float scale, float* scores) {
  constexpr int64_t dim = 32 * kChunks;
  const __m512 scale_v = _mm512_set1_ps(scale), inv_v = _mm512_set1_ps(1.0f / scale);
  const bool pow2 = ScaleIsPowerOfTwo(scale);
  __m512bh qv[kChunks];
#pragma GCC unroll 4
  for (int c = 0; c < kChunks; ++c) qv[c] = (__m512bh)_mm512_loadu_si512(q + 32 * c);
  int64_t l = 0;
  for (; l + 16 <= len; l += 16) {
    __m512 a[16];
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) {
      a[i] = _mm512_setzero_ps();
#pragma GCC unroll 4
      for (int c = 0; c < kChunks; ++c) {
        a[i] = _mm512_dpbf16_ps(a[i], (__m512bh)_mm512_loadu_si512(k + (l + i) * dim + 32 * c), qv[c]);
      }
    }
    _mm512_storeu_ps(scores + l, ApplyScale(HorizontalSums16(a), scale_v, inv_v, pow2));
  }
  for (; l < len; ++l) scores[l] = ReduceAdd(KeyDot(q, k + l * dim, dim)) / scale;
}

}  // namespace

void SegmentScoresBf16Avx512(const uint16_t* q, const uint16_t* k, int64_t len, int64_t dim, float scale,
                             float* scores) {
  switch (dim) {
    case 64:
      return ScoresFixedDim<2>(q, k, len, scale, scores);
    case 128:
      return ScoresFixedDim<4>(q, k, len, scale, scores);
    default:
      break;
  }
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

void SegmentScoresGroupBf16Avx512(const uint16_t* q, int64_t heads, const uint16_t* const* blocks, int64_t bs,
                                  int64_t len, int64_t dim, float scale, float* scores, int64_t stride) {
  const int64_t block_bytes = bs * dim * 2;
  for (int64_t b = 0; b * bs < len; ++b) {
    // The next block's keys into L1 while the block is scored for every
    // head. (Prefetching this block's values into L2 here, as the AVX2
    // kernel does, made no difference on a Zen 4: ValuesGroup prefetches
    // its rows ahead itself.)
    if (b == 0) PrefetchBytes<_MM_HINT_T0>(blocks[0], block_bytes);
    if ((b + 1) * bs < len) PrefetchBytes<_MM_HINT_T0>(blocks[b + 1], block_bytes);
    const int64_t n = std::min(bs, len - b * bs);
    for (int64_t h = 0; h < heads; ++h) {
      SegmentScoresBf16Avx512(q + h * dim, blocks[b], n, dim, scale, scores + h * stride + b * bs);
    }
  }
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

// Rounds probs[0, len) to bf16 bits (to nearest even; probabilities are
// finite) into dst, zero-padding to a multiple of 16.
void RoundProbs(const float* probs, int64_t len, uint16_t* dst) {
  const __m512i one = _mm512_set1_epi32(1), bias = _mm512_set1_epi32(0x7FFF);
  for (int64_t l = 0; l < len; l += 16) {
    const __mmask16 m = len - l >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (len - l)) - 1);
    const __m512i bits = _mm512_castps_si512(_mm512_maskz_loadu_ps(m, probs + l));
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), one);
    const __m512i r = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(lsb, bias)), 16);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + l), _mm512_cvtepi32_epi16(r));
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
// group of 4 x kRows accumulators).
void RowsAvx512Bf16(const Problem& p, int64_t row_begin, int64_t row_end) {
  VisitRows(row_begin, row_end, p.m <= 4, [&](const int64_t* rows, int n) {
    n == 4 ? AllInputs<4>(p, rows) : n == 2 ? AllInputs<2>(p, rows) : AllInputs<1>(p, rows);
  });
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
