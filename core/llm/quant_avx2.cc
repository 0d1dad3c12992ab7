// AVX2 quantized matrix-vector kernels (compiled with -mavx2 -mfma; see
// quant_kernels.h for the arithmetic). vpmaddubsw multiplies unsigned by
// signed bytes into saturating 16-bit pair sums: int8 weights (|w| <= 127)
// go in as |w| against sign(x, w), so no pair exceeds 2 * 127 * 127; int4
// weights (0..15) go in directly. One input row at a time, 4 output rows per
// step (the 4 rows' weights stay in L1 for the next input row).
#include <immintrin.h>

#include <algorithm>

#include "core/llm/in_register.h"
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

// 16 16-bit sums of products, as 8 fp32 pair sums.
inline __m256 Widen(__m256i pairs, __m256i ones) { return _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones)); }

template <int kRows>
void Int8Block(const Int8Problem& p, const int64_t* rows, int64_t m) {
  const Activations& a = *p.a;
  const int64_t inp = a.inp, blocks = inp / kBlock;
  const int8_t* x = a.xq.data() + m * inp;
  const float* d = a.d.data() + m * blocks;
  const __m256i ones = _mm256_set1_epi16(1);
  const int8_t* w[kRows];
#pragma GCC unroll 4
  for (int i = 0; i < kRows; ++i) w[i] = p.w + rows[i] * inp;
  // Two accumulators per row, for the even and the odd blocks (inp is a
  // multiple of 64): with one, each row's FMAs form one dependent chain.
  __m256 acc[kRows], acc_odd[kRows];
#pragma GCC unroll 4
  for (int i = 0; i < kRows; ++i) acc[i] = acc_odd[i] = _mm256_setzero_ps();
  for (int64_t b = 0; b < blocks; b += 2) {
    const int64_t k = b * kBlock;
    const __m256i x0 = InRegister(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + k)));
    const __m256i x1 = InRegister(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + k + kBlock)));
    const __m256 d0 = _mm256_broadcast_ss(d + b), d1 = _mm256_broadcast_ss(d + b + 1);
#pragma GCC unroll 4
    for (int i = 0; i < kRows; ++i) {
      if (kRows <= 2) PrefetchAhead(w[i], k, inp, inp);
      const __m256i w0 = InRegister(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[i] + k)));
      const __m256i w1 = InRegister(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[i] + k + kBlock)));
      acc[i] = _mm256_fmadd_ps(DotInt8(_mm256_abs_epi8(w0), w0, x0, ones), d0, acc[i]);
      acc_odd[i] = _mm256_fmadd_ps(DotInt8(_mm256_abs_epi8(w1), w1, x1, ones), d1, acc_odd[i]);
    }
  }
#pragma GCC unroll 4
  for (int i = 0; i < kRows; ++i) {
    float y = p.scale[rows[i]] * HorizontalSum(_mm256_add_ps(acc[i], acc_odd[i]));
    if (p.bias != nullptr) y += p.bias[rows[i]];
    StoreY(p, m * p.out + rows[i], y);
  }
}

// kSpan: inputs sharing one activation scale (Activations::SpanFor). With
// 64, the two blocks of each half share it and their 16-bit products are
// added before widening; with 128 (groups of 128 multiples: both halves of a
// chunk in one group) all four are, into the low half's accumulator.
template <int kRows, int kSpan>
void Int4Block(const Int4Problem& p, const int64_t* rows, int64_t m, int64_t groups) {
  const Activations& a = *p.a;
  const int64_t inp = a.inp, blocks = inp / kBlock;
  const int8_t* x = a.xq.data() + m * inp;
  const float* d = a.d.data() + m * blocks;
  const __m256i ones = _mm256_set1_epi16(1), low = _mm256_set1_epi8(0x0F);
  const uint8_t* w[kRows];
  const float* scale[kRows];
  for (int i = 0; i < kRows; ++i) {
    w[i] = p.w + rows[i] * p.w_stride;
    scale[i] = p.scale + rows[i] * p.s_stride;
  }
  // A 128-input chunk's low nibbles are inputs [k, k + 64), its high nibbles
  // [k + 64, k + 128); each half lies in one group (group % 64 == 0). Per row
  // one accumulator per half of the activation blocks' scaled integer sums
  // (the block scales are shared by the rows), multiplied by the row's group
  // scale once, when that half moves on to another group.
  __m256 acc[kRows], lo[kRows], hi[kRows];
#pragma GCC unroll 4
  for (int i = 0; i < kRows; ++i) acc[i] = lo[i] = hi[i] = _mm256_setzero_ps();
  // The groups the halves are in (inputs [end - group, end)), moved on at
  // the top of a chunk (the first, with group 64, flushes zeros).
  int64_t lo_group = 0, lo_end = p.group;
  int64_t hi_group = 0, hi_end = p.group;
  // (Written out, not a lambda over the arrays: that kept them in memory.)
  for (int64_t k = 0; k < inp; k += kChunk4) {
    if (k >= lo_end) {
#pragma GCC unroll 4
      for (int i = 0; i < kRows; ++i) {
        acc[i] = _mm256_fmadd_ps(lo[i], _mm256_broadcast_ss(scale[i] + lo_group), acc[i]);
        lo[i] = _mm256_setzero_ps();
      }
      while (k >= lo_end) ++lo_group, lo_end += p.group;
    }
    if (kSpan < 128 && k + 64 >= hi_end) {
#pragma GCC unroll 4
      for (int i = 0; i < kRows; ++i) {
        acc[i] = _mm256_fmadd_ps(hi[i], _mm256_broadcast_ss(scale[i] + hi_group), acc[i]);
        hi[i] = _mm256_setzero_ps();
      }
      while (k + 64 >= hi_end) ++hi_group, hi_end += p.group;
    }
    const float* db = d + k / kBlock;
    // One scale per span: the low half's (both halves' with spans of 128)
    // and the high half's.
    const __m256 d0 = _mm256_broadcast_ss(db), d2 = _mm256_broadcast_ss(db + 2);
    const __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + k));
    const __m256i x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + k + 32));
    const __m256i x2 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + k + 64));
    const __m256i x3 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + k + 96));
#pragma GCC unroll 4
    for (int i = 0; i < kRows; ++i) {
      const __m256i v0 = InRegister(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[i] + k / 2)));
      const __m256i v1 = InRegister(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[i] + k / 2 + 32)));
      const __m256i p0 = _mm256_maddubs_epi16(_mm256_and_si256(v0, low), x0);
      const __m256i p1 = _mm256_maddubs_epi16(_mm256_and_si256(v1, low), x1);
      const __m256i p2 = _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v0, 4), low), x2);
      const __m256i p3 = _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v1, 4), low), x3);
      if constexpr (kSpan == 64) {
        lo[i] = _mm256_fmadd_ps(Widen(_mm256_add_epi16(p0, p1), ones), d0, lo[i]);
        hi[i] = _mm256_fmadd_ps(Widen(_mm256_add_epi16(p2, p3), ones), d2, hi[i]);
      } else {
        const __m256i sum = _mm256_add_epi16(_mm256_add_epi16(p0, p1), _mm256_add_epi16(p2, p3));
        lo[i] = _mm256_fmadd_ps(Widen(sum, ones), d0, lo[i]);
      }
    }
  }
#pragma GCC unroll 4
  for (int i = 0; i < kRows; ++i) {
    acc[i] = _mm256_fmadd_ps(lo[i], _mm256_broadcast_ss(scale[i] + lo_group), acc[i]);
    if (kSpan < 128) acc[i] = _mm256_fmadd_ps(hi[i], _mm256_broadcast_ss(scale[i] + hi_group), acc[i]);
  }
  // The zero points' term, sum_g zmin[g] * gsum[g], in the same lanes (8
  // groups at a time, a masked last load; the scalar loop it replaces kept
  // its partial sums in memory, a long chain per row).
  const float* gsum = a.gsum.data() + m * groups;
  int64_t g = 0;
  for (; g + 8 <= groups; g += 8) {
    const __m256 gs = _mm256_loadu_ps(gsum + g);
#pragma GCC unroll 4
    for (int i = 0; i < kRows; ++i)
      acc[i] = _mm256_fmadd_ps(_mm256_loadu_ps(p.zmin + rows[i] * p.s_stride + g), gs, acc[i]);
  }
  if (g < groups) {
    const __m256i mask =
        _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(groups - g)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    const __m256 gs = _mm256_maskload_ps(gsum + g, mask);
#pragma GCC unroll 4
    for (int i = 0; i < kRows; ++i)
      acc[i] = _mm256_fmadd_ps(_mm256_maskload_ps(p.zmin + rows[i] * p.s_stride + g, mask), gs, acc[i]);
  }
#pragma GCC unroll 4
  for (int i = 0; i < kRows; ++i) {
    float y = HorizontalSum(acc[i]);
    if (p.bias != nullptr) y += p.bias[rows[i]];
    StoreY(p, m * p.out + rows[i], y);
  }
}

// One input row, groups of 128 (AWQ's and --quantize int4's), rows in
// VisitRows' streaming order (pairs far apart), in one loop over the pairs
// with the problem's invariants hoisted (as the VNNI kernel's
// Int4StreamG128): a chunk is one group at one activation scale, so its
// four 16-bit products are widened, converted and scaled once, by the
// product of the two scales (made by vectors for a window of 8 groups);
// two accumulators per row (even and odd chunks); the zero points' term
// joins the odd ones window by window.
void Int4StreamG128(const Int4Problem& p, int64_t row_begin, int64_t row_end) {
  constexpr int64_t kWindow = 8;
  const Activations& a = *p.a;
  const int64_t inp = a.inp, groups = inp / kChunk4;
  const int8_t* x = a.xq.data();
  const float* span_d = a.span_d.data();
  const float* gsum = a.gsum.data();
  const __m256i ones = _mm256_set1_epi16(1), low = _mm256_set1_epi8(0x0F);
  alignas(32) float sd[2][kWindow];
  // Sum of one row's chunk g (inputs 128g ..) as 16-bit pairs.
  auto products = [&](const uint8_t* w, int64_t g, __m256i x0, __m256i x1, __m256i x2, __m256i x3)
      __attribute__((always_inline)) {
    const __m256i v0 = InRegister(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + g * 64)));
    const __m256i v1 = InRegister(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + g * 64 + 32)));
    const __m256i p0 = _mm256_maddubs_epi16(_mm256_and_si256(v0, low), x0);
    const __m256i p1 = _mm256_maddubs_epi16(_mm256_and_si256(v1, low), x1);
    const __m256i p2 = _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v0, 4), low), x2);
    const __m256i p3 = _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v1, 4), low), x3);
    return _mm256_add_epi16(_mm256_add_epi16(p0, p1), _mm256_add_epi16(p2, p3));
  };
  const bool scales_ahead = groups >= kScaleAheadGroups;
  auto pair = [&](int64_t r0, int64_t r1) __attribute__((always_inline)) {
    const Int4Row row0 = RowOf(p, r0), row1 = RowOf(p, r1);
    if (scales_ahead) {
      PrefetchScalesAhead(p, r0);
      PrefetchScalesAhead(p, r1);
    }
    __m256 acc0[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    __m256 acc1[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    auto chunk = [&](int j, int64_t g) __attribute__((always_inline)) {
      PrefetchAhead(row0.w, g * 64, inp / 2, p.w_stride);
      PrefetchAhead(row1.w, g * 64, inp / 2, p.w_stride);
      const int8_t* xg = x + g * kChunk4;
      const __m256i x0 = InRegister(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xg)));
      const __m256i x1 = InRegister(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xg + 32)));
      const __m256i x2 = InRegister(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xg + 64)));
      const __m256i x3 = InRegister(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xg + 96)));
      const __m256i t0 = products(row0.w, g, x0, x1, x2, x3), t1 = products(row1.w, g, x0, x1, x2, x3);
      acc0[j] = _mm256_fmadd_ps(Widen(t0, ones), _mm256_broadcast_ss(sd[0] + g % kWindow), acc0[j]);
      acc1[j] = _mm256_fmadd_ps(Widen(t1, ones), _mm256_broadcast_ss(sd[1] + g % kWindow), acc1[j]);
    };
    for (int64_t g0 = 0; g0 < groups; g0 += kWindow) {
      const int64_t n = std::min(kWindow, groups - g0);
      const __m256i mask =
          _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
      const __m256 d = _mm256_maskload_ps(span_d + g0, mask), gs = _mm256_maskload_ps(gsum + g0, mask);
      _mm256_store_ps(sd[0], _mm256_mul_ps(_mm256_maskload_ps(row0.scale + g0, mask), d));
      _mm256_store_ps(sd[1], _mm256_mul_ps(_mm256_maskload_ps(row1.scale + g0, mask), d));
      acc0[1] = _mm256_fmadd_ps(_mm256_maskload_ps(row0.zmin + g0, mask), gs, acc0[1]);
      acc1[1] = _mm256_fmadd_ps(_mm256_maskload_ps(row1.zmin + g0, mask), gs, acc1[1]);
      EvenOddChunks(g0, g0 + n, 1, chunk);
    }
    float y0 = HorizontalSum(_mm256_add_ps(acc0[0], acc0[1])), y1 = HorizontalSum(_mm256_add_ps(acc1[0], acc1[1]));
    if (p.bias != nullptr) y0 += p.bias[r0], y1 += p.bias[r1];
    StoreY(p, r0, y0);
    StoreY(p, r1, y1);
  };
  const int64_t half = (row_end - row_begin) / 2;
  for (int64_t i = 0; i < half; ++i) pair(row_begin + i, row_begin + half + i);
  if ((row_end - row_begin) % 2 != 0) {
    const int64_t last = row_end - 1;
    Int4Block<1, 128>(p, &last, 0, groups);
  }
}

}  // namespace

float AbsMaxAvx2(const float* x, int64_t n) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256 m = _mm256_setzero_ps();
  for (int64_t k = 0; k < n; k += 8) m = _mm256_max_ps(m, _mm256_and_ps(_mm256_loadu_ps(x + k), abs_mask));
  __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
  m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
  return _mm_cvtss_f32(m4);
}

int32_t QuantizeBlockAvx2(const float* x, float amax, int8_t* q, int32_t* corr, float* lane_d) {
  // The portable code's arithmetic: scale = amax / 127, inv = 127 / amax,
  // q = nearbyint(x * inv) (vcvtps2dq rounds to nearest even under the
  // default MXCSR, as nearbyint), within [-127, 127].
  __m256 v[4];
  for (int j = 0; j < 4; ++j) v[j] = _mm256_loadu_ps(x + 8 * j);
  const float scale = amax / 127.0f;
  const __m256 inv = _mm256_set1_ps(amax > 0 ? 127.0f / amax : 0.0f);
  __m256i qi[4];
  for (int j = 0; j < 4; ++j) qi[j] = _mm256_cvtps_epi32(_mm256_mul_ps(v[j], inv));
  // int32 -> int8 (saturating packs work within 128-bit lanes; the permute
  // restores the order), then clamped to -127.
  const __m256i p16a = _mm256_packs_epi32(qi[0], qi[1]), p16b = _mm256_packs_epi32(qi[2], qi[3]);
  __m256i p8 = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(p16a, p16b), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
  p8 = _mm256_max_epi8(p8, _mm256_set1_epi8(-127));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(q), p8);
  // Sums of each 4 inputs: unsigned ones times signed bytes, pairs, then
  // pairs of pairs.
  const __m256i lanes = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), p8), _mm256_set1_epi16(1));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(corr), _mm256_mullo_epi32(lanes, _mm256_set1_epi32(-128)));
  _mm256_storeu_ps(lane_d, _mm256_set1_ps(scale));
  __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(lanes), _mm256_extracti128_si256(lanes, 1));
  s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
  s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
  return _mm_cvtsi128_si32(s4);
}

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

namespace {
template <int kSpan>
void Int4Rows(const Int4Problem& p, int64_t row_begin, int64_t row_end) {
  const int64_t groups = p.a->inp / p.group;  // (one division per call, not per row)
  VisitRows(row_begin, row_end, p.a->m == 1, [&](const int64_t* rows, int n) {
    for (int64_t m = 0; m < p.a->m; ++m) {
      n == 4   ? Int4Block<4, kSpan>(p, rows, m, groups)
      : n == 2 ? Int4Block<2, kSpan>(p, rows, m, groups)
               : Int4Block<1, kSpan>(p, rows, m, groups);
    }
  });
}
}  // namespace

void Int4RowsAvx2(const Int4Problem& p, int64_t row_begin, int64_t row_end) {
  if (p.group == 128 && p.a->m == 1) return Int4StreamG128(p, row_begin, row_end);
  Activations::SpanFor(p.group) == 128 ? Int4Rows<128>(p, row_begin, row_end) : Int4Rows<64>(p, row_begin, row_end);
}

// 8 values at a time (groups are multiples of 64: 8 never straddle two), the
// product and the sum as separate instructions (the reference's two
// roundings; the product pinned by InRegister, or GCC contracts the pair
// into an FMA); the row's last in % 8 values by the portable code.
void DequantRowsAvx2(const Dequant& p, int64_t row_begin, int64_t row_end) {
  if (p.out32 == nullptr) return DequantRowsPortable(p, row_begin, row_end);
  const int64_t full = p.in / 8 * 8;
  const __m128i low = _mm_set1_epi8(0x0F);
  for (int64_t r = row_begin; r < row_end; ++r) {
    float* o = p.out32 + (r - row_begin) * p.in;
    if (p.group == 0) {
      const int8_t* w = p.w8 + r * p.inp;
      const __m256 s = _mm256_set1_ps(p.scale[r]);
      for (int64_t k = 0; k < full; k += 8) {
        const __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(w + k));
        _mm256_storeu_ps(o + k, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), s));
      }
    } else {
      const uint8_t* w = p.w4 + r * p.w_stride;
      for (int64_t k = 0; k < full; k += 8) {
        const int64_t c = k / kChunk4, j = k % kChunk4, g = r * p.s_stride + k / p.group;
        __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(w + c * (kChunk4 / 2) + j % 64));
        q = _mm_and_si128(j < 64 ? q : _mm_srli_epi16(q, 4), low);
        const __m256 product = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q)), _mm256_set1_ps(p.scale[g]));
        _mm256_storeu_ps(o + k, _mm256_add_ps(InRegister(product), _mm256_set1_ps(p.zmin[g])));
      }
    }
    DequantValuesPortable(p, r, full, p.in, (r - row_begin) * p.in);
  }
}

}  // namespace internvl::llm::quant
