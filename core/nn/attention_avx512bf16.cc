// Fused bf16 attention for CPUs with AVX-512-BF16 (attention_kernels.h).
// This file alone is compiled with -mavx512f -mavx512bw -mavx512vl
// -mavx512bf16 -mfma and includes no torch headers; attention.cc checks the
// CPU first.
//
// Per head: the keys are repacked so that 16 keys' pair p of dims (2p, 2p+1)
// fill one 64-byte vector (kp[p][j]), the values so that one vector holds
// dims d..d+15 of two adjacent keys interleaved (vp[j/2][d]): then one
// vdpbf16ps with a broadcast query pair adds 32 products into 16 keys'
// scores, and one with a broadcast pair of probabilities adds two keys'
// values into 16 output dims. A block of 48 query rows: scores for 6 rows x
// 64 keys at a time (24 accumulators), the softmax per row, the values for a
// few rows x all dims at a time; the block's scores (~100 KB for 1025 keys)
// and the packed keys and values stay in L2.
//
// Arithmetic, as the op chain of bf16 products (oneDNN's AVX-512-BF16
// kernels) and the project's softmax compute it:
// - scores: the products of each query and key summed in fp32 over the dim
//   pairs in order, rounded to bf16 to nearest even (vcvtneps2bf16, which
//   flushes fp32 denormals; InternViT's attention came out bit-equal to
//   oneDNN's products on the Zen 5 VM, bench shapes); with a divisor,
//   divided in fp32 and rounded again (a bf16 tensor's div_);
// - causal rows: keys past a row's position weigh exactly 0 (the op chain's
//   -inf scores); the scores of a step of 6 rows stop at its last row's keys;
// - softmax: each row's bf16 scores in fp32, exp(x - max) with
//   core/nn/exp_avx512.h's exponential, summed in SoftmaxRowsBf16Avx512's
//   order, multiplied by the sum's reciprocal and rounded once to bf16
//   (vcvtneps2bf16: a probability below 2^-126 becomes 0 where the op
//   chain's rounding keeps a bf16 denormal); a row holding a NaN, or whose
//   maximum is infinite, is all NaN;
// - output: probability x value products summed in fp32 over the keys in
//   order, rounded to bf16.
// GCC 12's AVX-512 headers leave lanes undefined on purpose in reductions
// and conversions, which -W(maybe-)uninitialized reports inside them.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "core/nn/attention_kernels.h"
#include "core/nn/bf16_avx512.h"
#include "core/nn/exp_avx512.h"

namespace internvl::attention {
namespace {

// Query rows per block: their bf16 scores are one buffer of kBlock rows.
constexpr int64_t kBlock = 48;
// Query rows x 64 keys per scores step (6 x 4 accumulators).
constexpr int kScoreRows = 6;

constexpr int64_t RoundUp(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

inline __mmask16 Lanes(int64_t n) {
  return n >= 16 ? __mmask16(0xFFFF) : n <= 0 ? __mmask16(0) : static_cast<__mmask16>((1u << n) - 1);
}

// 16 fp32 lanes rounded to bf16 (nearest even, denormals flushed).
inline __m256i ToBf16(__m512 v) { return reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v)); }

// f rounded to bf16 as ToBf16 rounds, back in fp32.
inline float RoundThroughBf16(float f) {
  const __m256i b = ToBf16(_mm512_set1_ps(f));
  const uint32_t bits = static_cast<uint32_t>(static_cast<uint16_t>(_mm256_extract_epi16(b, 0))) << 16;
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}

// Where a head's buffers lie in the scratch.
struct Layout {
  int64_t lp;     // keys rounded up to 16: kp's row, a scores row
  int64_t pairs;  // key pairs, (keys + 1) / 2
  int64_t kp_bytes, vp_bytes, s_bytes, e_bytes;
};

Layout MakeLayout(int64_t keys, int64_t dim) {
  Layout l;
  l.lp = RoundUp(keys, 16);
  l.pairs = (keys + 1) / 2;
  l.kp_bytes = RoundUp(dim / 2 * l.lp * 4, 64);
  l.vp_bytes = RoundUp(l.pairs * dim * 4, 64);
  l.s_bytes = RoundUp(kBlock * l.lp * 2, 64);
  l.e_bytes = RoundUp(l.lp * 4, 64);
  return l;
}

// kp[p * lp + j] = the word (k[j][2p], k[j][2p + 1]); 0 for j in [keys, lp).
void PackKeys(const Head& h, const Layout& l, uint32_t* kp) {
  const __m512i idx = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                         _mm512_set1_epi32(static_cast<int>(h.k_stride)));
  for (int64_t j0 = 0; j0 < l.lp; j0 += 16) {
    const __mmask16 m = Lanes(h.keys - j0);
    const uint16_t* base = h.k + j0 * h.k_stride;
    for (int64_t p = 0; p < h.dim / 2; ++p)
      _mm512_storeu_si512(kp + p * l.lp + j0,
                          _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), m, idx, base + 2 * p, 2));
  }
}

// vp[jp * dim + d] = the word (v[2jp][d], v[2jp + 1][d]); a zero key past the
// last when keys is odd.
void PackValues(const Head& h, uint32_t* vp) {
  alignas(64) uint16_t lo[32], hi[32];
  for (int t = 0; t < 16; ++t) {
    lo[2 * t] = static_cast<uint16_t>(t);
    lo[2 * t + 1] = static_cast<uint16_t>(32 + t);
    hi[2 * t] = static_cast<uint16_t>(16 + t);
    hi[2 * t + 1] = static_cast<uint16_t>(48 + t);
  }
  const __m512i lo_idx = _mm512_load_si512(lo), hi_idx = _mm512_load_si512(hi);
  for (int64_t j = 0; j < h.keys; j += 2) {
    const uint16_t* a = h.v + j * h.v_stride;
    uint32_t* dst = vp + (j / 2) * h.dim;
    for (int64_t d = 0; d < h.dim; d += 32) {
      // 32 dims at a time; a last 16 (dim % 32 == 16) from 16-element loads.
      const __mmask32 m = h.dim - d >= 32 ? ~__mmask32{0} : __mmask32{0xFFFF};
      const __m512i va = _mm512_maskz_loadu_epi16(m, a + d);
      const __m512i vb = j + 1 < h.keys ? _mm512_maskz_loadu_epi16(m, a + h.v_stride + d) : _mm512_setzero_si512();
      _mm512_storeu_si512(dst + d, _mm512_permutex2var_epi16(va, lo_idx, vb));
      if (h.dim - d >= 32) _mm512_storeu_si512(dst + d + 16, _mm512_permutex2var_epi16(va, hi_idx, vb));
    }
  }
}

// A scores step's rows: their queries (words, rows qs32 apart, `pairs`
// pairs), how many keys each row sees, and the divisor of the scores (1:
// none).
struct ScoreRows {
  const uint32_t* q32;
  int64_t qs32, pairs;
  const int64_t* limit;
  float divisor;
};

// Scores of R query rows against keys [j0, j0 + 16C), rounded to bf16 (and,
// with a divisor, divided in fp32 and rounded again) into s + r * ss + j0;
// mx[r] keeps the running maximum over the keys row r sees (before the
// rounding: rounding and division keep the order).
template <int R, int C>
inline void ScoresBlock(const ScoreRows& rows, const uint32_t* kp, int64_t lp, int64_t j0, uint16_t* s, int64_t ss,
                        __m512* mx) {
  __m512 acc[R][C];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
  for (int64_t p = 0; p < rows.pairs; ++p) {
    __m512bh kv[C];
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) kv[c] = reinterpret_cast<__m512bh>(_mm512_loadu_si512(kp + p * lp + j0 + 16 * c));
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512bh qb = reinterpret_cast<__m512bh>(_mm512_set1_epi32(static_cast<int>(rows.q32[r * rows.qs32 + p])));
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], qb, kv[c]);
    }
  }
  const bool divide = rows.divisor != 1.0f;
  const __m512 divisor = _mm512_set1_ps(rows.divisor);
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) {
      __m256i bits = ToBf16(acc[r][c]);
      if (divide) bits = ToBf16(_mm512_div_ps(simd::WidenBf16x16(bits), divisor));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(s + r * ss + j0 + 16 * c), bits);
      // (max(acc, mx) keeps mx where acc is NaN: the softmax finds NaNs.)
      mx[r] = _mm512_mask_max_ps(mx[r], Lanes(rows.limit[r] - j0 - 16 * c), acc[r][c], mx[r]);
    }
  }
}

// All scores of R query rows into s's rows: keys [0, limit[r]) for row r
// (those up to the rows' last limit, rounded up to 16, computed);
// rmax[r]: each row's maximum score as stored (bf16, in fp32).
template <int R>
void ScoresRowsOf(const ScoreRows& rows, const uint32_t* kp, int64_t lp, uint16_t* s, float* rmax) {
  __m512 mx[R];
  int64_t end = 0;
  for (int r = 0; r < R; ++r) {
    mx[r] = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    end = std::max(end, rows.limit[r]);
  }
  int64_t j0 = 0;
  for (; j0 + 64 <= end; j0 += 64) ScoresBlock<R, 4>(rows, kp, lp, j0, s, lp, mx);
  for (; j0 < end; j0 += 16) ScoresBlock<R, 1>(rows, kp, lp, j0, s, lp, mx);
  for (int r = 0; r < R; ++r) {
    const float max = RoundThroughBf16(_mm512_reduce_max_ps(mx[r]));
    rmax[r] = rows.divisor != 1.0f ? RoundThroughBf16(max / rows.divisor) : max;
  }
}

// ScoresRowsOf for n <= R rows.
template <int R>
void ScoresRows(int64_t n, const ScoreRows& rows, const uint32_t* kp, int64_t lp, uint16_t* s, float* rmax) {
  if constexpr (R > 0) {
    if (n == R) return ScoresRowsOf<R>(rows, kp, lp, s, rmax);
    ScoresRows<R - 1>(n, rows, kp, lp, s, rmax);
  }
}

// Softmax of one row of n bf16 scores in place, its maximum given; e: n
// floats of scratch. The sums in SoftmaxRowsBf16Avx512's order.
void SoftmaxRow(uint16_t* x, int64_t n, float max, float* e) {
  __mmask16 nan = 0;
  const float sum =
      simd::ExpSumAvx512([x](int64_t i, __mmask16 m) { return simd::LoadBf16x16(x + i, m); }, n, max, e, &nan);
  const float inv = nan != 0 || !std::isfinite(max) ? std::numeric_limits<float>::quiet_NaN() : 1.0f / sum;
  const __m512 iv = _mm512_set1_ps(inv);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = Lanes(n - i);
    _mm256_mask_storeu_epi16(x + i, m, ToBf16(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, e + i), iv)));
  }
}

// Output rows of R query rows: probabilities p (bf16 rows ps apart, read in
// pairs of keys) against the packed values, dim = 16C.
template <int R, int C>
void ValuesRows(const uint16_t* p, int64_t ps, const uint32_t* vp, int64_t pairs, uint16_t* out, int64_t os) {
  constexpr int64_t kDim = 16 * C;
  const auto* p32 = reinterpret_cast<const uint32_t*>(p);
  const int64_t ps32 = ps / 2;
  __m512 acc[R][C];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
  for (int64_t jp = 0; jp < pairs; ++jp) {
    __m512bh vv[C];
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) vv[c] = reinterpret_cast<__m512bh>(_mm512_loadu_si512(vp + jp * kDim + 16 * c));
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512bh pb = reinterpret_cast<__m512bh>(_mm512_set1_epi32(static_cast<int>(p32[r * ps32 + jp])));
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], pb, vv[c]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + r * os + 16 * c), ToBf16(acc[r][c]));
}

template <int R, int C>
void ValuesTail(int64_t n, const uint16_t* p, int64_t ps, const uint32_t* vp, int64_t pairs, uint16_t* out,
                int64_t os) {
  if constexpr (R > 0) {
    if (n == R) return ValuesRows<R, C>(p, ps, vp, pairs, out, os);
    ValuesTail<R - 1, C>(n, p, ps, vp, pairs, out, os);
  }
}

// Output rows for a block of n query rows, 24 / C rows at a time (at most
// 8), each step over the key pairs its last row sees (limits ascend).
template <int C>
void ValuesBlock(int64_t n, const uint16_t* s, int64_t ss, const uint32_t* vp, const int64_t* limit, uint16_t* out,
                 int64_t os) {
  constexpr int kRows = std::min(8, 24 / C);
  int64_t r = 0;
  for (; r + kRows <= n; r += kRows)
    ValuesRows<kRows, C>(s + r * ss, ss, vp, (limit[r + kRows - 1] + 1) / 2, out + r * os, os);
  if (r < n) ValuesTail<kRows - 1, C>(n - r, s + r * ss, ss, vp, (limit[n - 1] + 1) / 2, out + r * os, os);
}

// ValuesBlock<C> for dim = 16C.
using ValuesFn = void (*)(int64_t, const uint16_t*, int64_t, const uint32_t*, const int64_t*, uint16_t*, int64_t);

}  // namespace

int64_t HeadScratchBytes(int64_t keys, int64_t dim) {
  const Layout l = MakeLayout(keys, dim);
  return l.kp_bytes + l.vp_bytes + l.s_bytes + l.e_bytes;
}

void HeadBf16Avx512(const Head& h, void* scratch, bool pack) {
  if (h.rows <= 0 || h.keys <= 0 || !HeadDimSupported(h.dim)) return;
  const Layout l = MakeLayout(h.keys, h.dim);
  auto* bytes = static_cast<char*>(scratch);
  auto* kp = reinterpret_cast<uint32_t*>(bytes);
  auto* vp = reinterpret_cast<uint32_t*>(bytes + l.kp_bytes);
  auto* s = reinterpret_cast<uint16_t*>(bytes + l.kp_bytes + l.vp_bytes);
  auto* e = reinterpret_cast<float*>(bytes + l.kp_bytes + l.vp_bytes + l.s_bytes);
  if (pack) {
    PackKeys(h, l, kp);
    PackValues(h, vp);
  }
  const int64_t ss = l.lp;
  float rmax[kBlock];
  int64_t limit[kBlock];
  for (int64_t i0 = 0; i0 < h.rows; i0 += kBlock) {
    const int64_t n = std::min(kBlock, h.rows - i0);
    for (int64_t r = 0; r < n; ++r)
      limit[r] = h.causal_start < 0 ? h.keys : std::min(h.keys, h.causal_start + i0 + r + 1);
    ScoreRows rows{reinterpret_cast<const uint32_t*>(h.q + i0 * h.q_stride), h.q_stride / 2, h.dim / 2, limit,
                   h.score_divisor};
    for (int64_t r = 0; r < n; r += kScoreRows) {
      ScoreRows part = rows;
      part.q32 += r * rows.qs32;
      part.limit += r;
      ScoresRows<kScoreRows>(std::min<int64_t>(kScoreRows, n - r), part, kp, ss, s + r * ss, rmax + r);
    }
    // Each row's probabilities, then zeros up to the block's last key (rounded
    // up to a pair): the values' steps read a few rows' keys together, and
    // with an odd count the last pair's second probability is the padding
    // key's.
    const int64_t fill_end = RoundUp(limit[n - 1], 2);
    for (int64_t r = 0; r < n; ++r) {
      SoftmaxRow(s + r * ss, limit[r], rmax[r], e);
      std::fill(s + r * ss + limit[r], s + r * ss + fill_end, uint16_t{0});
    }
    uint16_t* out = h.out + i0 * h.out_stride;
    constexpr ValuesFn kValues[] = {ValuesBlock<1>, ValuesBlock<2>, ValuesBlock<3>, ValuesBlock<4>,
                                    ValuesBlock<5>, ValuesBlock<6>, ValuesBlock<7>, ValuesBlock<8>};
    kValues[h.dim / 16 - 1](n, s, ss, vp, limit, out, h.out_stride);
  }
}

}  // namespace internvl::attention
