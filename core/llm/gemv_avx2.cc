// AVX2 + FMA matrix-vector kernels (this file alone is compiled with -mavx2
// -mfma -mf16c; see CMakeLists.txt). Batch-1 decoding reads every weight once
// per token, so these kernels are memory-bound: they stream the weights with
// plain 256-bit loads, keep the input rows in L1/L2, and accumulate 4 output
// rows x a few input rows at a time (more input rows reuse the 4 weight rows
// from L1: the weights are read from memory once whatever M).
//
// bf16 weights: 16 at a time in one 32-byte load; as 32-bit lanes, the high
// half (odd element) masked is its fp32 value and the low half (even element)
// shifted up by 16 is its own. Multiplying those by the input's odd and even
// elements (x permuted once per product, Prepare) needs no lane-crossing
// widening: 5 instructions per 16 weights instead of 8, which matters on a
// core shared with other processes.
#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "core/llm/gemv_kernels.h"
#include "core/llm/in_register.h"
#include "core/llm/row_order.h"
#include "core/nn/exp_avx2.h"
#include "core/nn/simd_avx2.h"

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

inline float Bf16ToFloat(uint16_t v) {
  const uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  __builtin_memcpy(&f, &bits, sizeof(f));
  return f;
}

// fp32 weights: rows rows[0..kRows) x input rows [m0, m0 + M).
template <int kRows, int M>
inline void BlockF32(const Problem& p, const int64_t* rows, int64_t m0) {
  const int64_t in = p.in;
  const int64_t vec_end = in & ~int64_t{7};
  const float* w[kRows];
  for (int i = 0; i < kRows; ++i) w[i] = static_cast<const float*>(p.w) + rows[i] * in;
  __m256 acc[kRows][M];
#pragma GCC unroll 4
  for (int i = 0; i < kRows; ++i) {
#pragma GCC unroll 4
    for (int m = 0; m < M; ++m) acc[i][m] = _mm256_setzero_ps();
  }
  for (int64_t k = 0; k < vec_end; k += 8) {
    __m256 xv[M];
#pragma GCC unroll 4
    for (int m = 0; m < M; ++m) xv[m] = _mm256_loadu_ps(p.x + (m0 + m) * in + k);
#pragma GCC unroll 4
    for (int i = 0; i < kRows; ++i) {
      const __m256 wv = _mm256_loadu_ps(w[i] + k);
#pragma GCC unroll 4
      for (int m = 0; m < M; ++m) acc[i][m] = _mm256_fmadd_ps(wv, xv[m], acc[i][m]);
    }
  }
  for (int i = 0; i < kRows; ++i) {
    for (int m = 0; m < M; ++m) {
      float s = HorizontalSum(acc[i][m]);
      for (int64_t k = vec_end; k < in; ++k) s += w[i][k] * p.x[(m0 + m) * in + k];
      s = AddBias(p, rows[i], s);
      StoreY(p, (m0 + m) * p.out + rows[i], s);
    }
  }
}

// bf16 weights: rows rows[0..kRows) x input rows [m0, m0 + M), x from
// p.x_perm (per 16 elements: the 8 even, then the 8 odd ones). With adjacent
// rows, only the first group of input rows prefetches (the next ones find
// the rows in L1): one block ahead, 2 cache lines per 16 x 4 weights, since
// rows of 1-10 KB are too short for the hardware prefetchers to ramp up on
// each of the 4 streams (measured 15 -> 19 GB/s).
template <int kRows, int M>
inline void BlockBf16(const Problem& p, const int64_t* rows, int64_t m0) {
  const int64_t in = p.in;
  const int64_t vec_end = in & ~int64_t{15};
  const int64_t row = rows[0];
  const auto* w = static_cast<const uint16_t*>(p.w) + row * in;
  const __m256i high = _mm256_set1_epi32(static_cast<int>(0xffff0000u));
  // (Only groups of 4 adjacent rows prefetch: streaming pairs lie far apart.
  // A compile-time choice, or the test stays in the loop, reloading its
  // operands from the stack every step.)
  constexpr bool kMayPrefetch = kRows == 4;
  const bool prefetch = kMayPrefetch && m0 == 0 && rows[kRows - 1] == row + kRows - 1;
  const char* ahead = reinterpret_cast<const char*>(w + kRows * in);
  const char* limit = reinterpret_cast<const char*>(static_cast<const uint16_t*>(p.w) + p.out * in);
  // The even and the odd products in two accumulators where the registers
  // allow (up to 4 of rows x input rows): with one, a row's two FMAs per 16
  // weights form one dependent chain (4 cycles each), and two streaming rows
  // ran at ~25 GB/s per thread from L1 or L2, below what one thread reads
  // from memory on some machines. With two: 34-39 GB/s (one thread, rows of
  // 896 and 4864, A/B in one microbenchmark).
  constexpr bool kSplit = kRows * M <= 4;
  __m256 acc[kRows][M], acc_odd[kRows][M];
#pragma GCC unroll 4
  for (int i = 0; i < kRows; ++i) {
#pragma GCC unroll 4
    for (int m = 0; m < M; ++m) acc[i][m] = acc_odd[i][m] = _mm256_setzero_ps();
  }
  for (int64_t k = 0; k < vec_end; k += 16) {
    if (prefetch) {
      const char* a = ahead + k * kRows * 2;
      if (a + 64 < limit) {
        _mm_prefetch(a, _MM_HINT_T0);
        _mm_prefetch(a + 64, _MM_HINT_T0);
      }
    }
    __m256 xe[M], xo[M];
#pragma GCC unroll 4
    for (int m = 0; m < M; ++m) {
      xe[m] = InRegister(_mm256_loadu_ps(p.x_perm + (m0 + m) * in + k));
      xo[m] = InRegister(_mm256_loadu_ps(p.x_perm + (m0 + m) * in + k + 8));
    }
#pragma GCC unroll 4
    for (int i = 0; i < kRows; ++i) {
      const __m256i v = InRegister(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(p.w) + rows[i] * in + k)));
      const __m256 we = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
      const __m256 wo = _mm256_castsi256_ps(_mm256_and_si256(v, high));
#pragma GCC unroll 4
      for (int m = 0; m < M; ++m) {
        acc[i][m] = _mm256_fmadd_ps(we, xe[m], acc[i][m]);
        if constexpr (kSplit) {
          acc_odd[i][m] = _mm256_fmadd_ps(wo, xo[m], acc_odd[i][m]);
        } else {
          acc[i][m] = _mm256_fmadd_ps(wo, xo[m], acc[i][m]);
        }
      }
    }
  }
  for (int i = 0; i < kRows; ++i) {
    for (int m = 0; m < M; ++m) {
      float s = HorizontalSum(kSplit ? _mm256_add_ps(acc[i][m], acc_odd[i][m]) : acc[i][m]);
      const uint16_t* wi = static_cast<const uint16_t*>(p.w) + rows[i] * in;
      for (int64_t k = vec_end; k < in; ++k) s += Bf16ToFloat(wi[k]) * p.x[(m0 + m) * in + k];
      s = AddBias(p, rows[i], s);
      StoreY(p, (m0 + m) * p.out + rows[i], s);
    }
  }
}

// All input rows, in groups of 4 (fp32: 16 accumulators; the inputs come as
// FMA memory operands from L1) or 2 (bf16: 8 accumulators + 4 inputs + 2
// weights in the 16 vector registers).
template <int kRows>
inline void AllInputsF32(const Problem& p, const int64_t* row) {
  int64_t m0 = 0;
  for (; m0 + 4 <= p.m; m0 += 4) BlockF32<kRows, 4>(p, row, m0);
  switch (p.m - m0) {
    case 1:
      return BlockF32<kRows, 1>(p, row, m0);
    case 2:
      return BlockF32<kRows, 2>(p, row, m0);
    case 3:
      return BlockF32<kRows, 3>(p, row, m0);
    default:
      return;
  }
}

template <int kRows>
inline void AllInputsBf16(const Problem& p, const int64_t* row) {
  int64_t m0 = 0;
  for (; m0 + 2 <= p.m; m0 += 2) BlockBf16<kRows, 2>(p, row, m0);
  if (m0 < p.m) BlockBf16<kRows, 1>(p, row, m0);
}

}  // namespace

void PrepareAvx2(Problem& p, float* scratch) {
  if (!p.w_bf16) return;
  const int64_t vec_end = p.in & ~int64_t{15};
  for (int64_t m = 0; m < p.m; ++m) {
    const float* x = p.x + m * p.in;
    float* dst = scratch + m * p.in;
    for (int64_t k = 0; k < vec_end; k += 16) {
      for (int j = 0; j < 8; ++j) {
        dst[k + j] = x[k + 2 * j];
        dst[k + 8 + j] = x[k + 2 * j + 1];
      }
    }
    for (int64_t k = vec_end; k < p.in; ++k) dst[k] = x[k];
  }
  p.x_perm = scratch;
}

// Two sets of 8 lanes, each lane keeping its first largest (a strict
// compare: NaN never replaces it) and where it was; then the lanes' first
// position of the largest. The single values past the last 8 likewise.
int64_t ArgMaxAvx2(const float* x, int64_t n, bool* nan) {
  __m256 top[2] = {_mm256_set1_ps(-INFINITY), _mm256_set1_ps(-INFINITY)}, nans = _mm256_setzero_ps();
  __m256i at[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
  __m256i index[2] = {_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15)};
  auto take = [&](int s, __m256 v) __attribute__((always_inline)) {
    const __m256 greater = _mm256_cmp_ps(v, top[s], _CMP_GT_OQ);
    top[s] = _mm256_blendv_ps(top[s], v, greater);
    at[s] = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(at[s]), _mm256_castsi256_ps(index[s]), greater));
    nans = _mm256_or_ps(nans, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  };
  int64_t i = 0;
  const __m256i step16 = _mm256_set1_epi32(16);
  for (; i + 16 <= n; i += 16) {
    take(0, _mm256_loadu_ps(x + i));
    take(1, _mm256_loadu_ps(x + i + 8));
    index[0] = _mm256_add_epi32(index[0], step16);
    index[1] = _mm256_add_epi32(index[1], step16);
  }
  if (i + 8 <= n) {
    take(0, _mm256_loadu_ps(x + i));
    i += 8;
  }
  alignas(32) float lanes[16];
  alignas(32) int32_t where[16];
  for (int s = 0; s < 2; ++s) {
    _mm256_store_ps(lanes + 8 * s, top[s]);
    _mm256_store_si256(reinterpret_cast<__m256i*>(where + 8 * s), at[s]);
  }
  float best = *std::max_element(lanes, lanes + 16);
  int64_t first = n;
  for (int l = 0; l < 16; ++l) {
    if (lanes[l] == best) first = std::min<int64_t>(first, where[l]);
  }
  if (first == n) first = 0;  // (no lane above -inf: nothing scanned yet)
  bool any_nan = _mm256_movemask_ps(nans) != 0;
  for (; i < n; ++i) {
    any_nan |= std::isnan(x[i]);
    if (x[i] > best) best = x[i], first = i;
  }
  *nan = any_nan;
  return first;
}

// Output rows in row_order.h's order: streaming while the inputs fit one
// group (2 for bf16 weights, 4 for fp32).
void Bf16ToFloatAvx2(const uint16_t* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, simd::LoadBf16x8(src + i));
  if (i < n) {
    alignas(32) float t[8];
    _mm256_store_ps(t, simd::LoadBf16Tail(src + i, n - i));
    for (int64_t j = 0; i + j < n; ++j) dst[i + j] = t[j];
  }
}

void FloatToBf16Avx2(const float* src, uint16_t* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) simd::StoreBf16x8(dst + i, _mm256_loadu_ps(src + i));
  if (i < n) {
    alignas(32) float t[8] = {};
    for (int64_t j = 0; i + j < n; ++j) t[j] = src[i + j];
    simd::StoreBf16Tail(dst + i, n - i, _mm256_load_ps(t));
  }
}

namespace {

// x^2 of 8 floats added to two 4-lane double sums (lanes 0-3 and 4-7: the
// portable MeanOfSquares's sums i % 8). Exact products: a float squared fits
// a double's mantissa.
inline void AddSquares(__m256 v, __m256d& lo, __m256d& hi) {
  const __m256d a = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
  const __m256d b = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
  lo = _mm256_add_pd(lo, _mm256_mul_pd(a, a));
  hi = _mm256_add_pd(hi, _mm256_mul_pd(b, b));
}

inline float MeanOfSquares(__m256d lo, __m256d hi, int64_t n) {
  alignas(32) double t[4];
  _mm256_store_pd(t, _mm256_add_pd(lo, hi));  // t[j] = s[j] + s[j + 4]
  return static_cast<float>(((t[0] + t[1]) + (t[2] + t[3])) / static_cast<double>(n));
}

// A value the compiler cannot see through: keeps a product from being fused
// with the addition that follows (-mfma would make it one rounding, not two).
inline __m256 Opaque(__m256 v) {
  __asm__("" : "+x"(v));
  return v;
}

}  // namespace

void RmsNormRowAvx2(const float* x, const float* w, int64_t n, float eps, float* out) {
  __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();
  const int64_t whole = n / 8 * 8;
  for (int64_t i = 0; i < whole; i += 8) AddSquares(_mm256_loadu_ps(x + i), lo, hi);
  alignas(32) float tail[8] = {};
  for (int64_t i = whole; i < n; ++i) tail[i - whole] = x[i];
  AddSquares(_mm256_load_ps(tail), lo, hi);  // zeros add nothing
  const float inv = 1.0f / std::sqrt(MeanOfSquares(lo, hi, n) + eps);
  const __m256 vinv = _mm256_set1_ps(inv);
  for (int64_t i = 0; i < whole; i += 8) {
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_loadu_ps(w + i), _mm256_mul_ps(_mm256_loadu_ps(x + i), vinv)));
  }
  for (int64_t i = whole; i < n; ++i) out[i] = w[i] * (x[i] * inv);
}

void RmsNormRowBf16Avx2(const uint16_t* x, const uint16_t* w, int64_t n, float eps, uint16_t* out) {
  __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();
  const int64_t whole = n / 8 * 8;
  for (int64_t i = 0; i < whole; i += 8) AddSquares(simd::LoadBf16x8(x + i), lo, hi);
  if (whole < n) AddSquares(simd::LoadBf16Tail(x + whole, n - whole), lo, hi);
  const float inv = 1.0f / std::sqrt(MeanOfSquares(lo, hi, n) + eps);
  const __m256 vinv = _mm256_set1_ps(inv);
  auto norm8 = [&](__m256 xv, __m256 wv) { return _mm256_mul_ps(wv, simd::RoundBf16x8(_mm256_mul_ps(xv, vinv))); };
  for (int64_t i = 0; i < whole; i += 8) {
    simd::StoreBf16x8(out + i, norm8(simd::LoadBf16x8(x + i), simd::LoadBf16x8(w + i)));
  }
  if (whole < n) {
    const int64_t t = n - whole;
    simd::StoreBf16Tail(out + whole, t, norm8(simd::LoadBf16Tail(x + whole, t), simd::LoadBf16Tail(w + whole, t)));
  }
}

void AddRowAvx2(const float* a, const float* b, int64_t n, float* out) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, _mm256_add_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)));
  for (; i < n; ++i) out[i] = a[i] + b[i];
}

void AddRowBf16Avx2(const uint16_t* a, const uint16_t* b, int64_t n, uint16_t* out) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    simd::StoreBf16x8(out + i, _mm256_add_ps(simd::LoadBf16x8(a + i), simd::LoadBf16x8(b + i)));
  }
  if (i < n) {
    const int64_t t = n - i;
    simd::StoreBf16Tail(out + i, t, _mm256_add_ps(simd::LoadBf16Tail(a + i, t), simd::LoadBf16Tail(b + i, t)));
  }
}

void RopeRowsAvx2(const float* x, int64_t heads, int64_t d, const float* cos, const float* sin, float* out) {
  const int64_t half = d / 2;
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (int64_t h = 0; h < heads; ++h, x += d, out += d) {
    for (int64_t e = 0; e < half; e += 8) {
      const __m256 x1 = _mm256_loadu_ps(x + e), x2 = _mm256_loadu_ps(x + e + half);
      // out[e] = x1 cos - x2 sin, out[e + half] = x2 cos + x1 sin.
      const __m256 a1 = Opaque(_mm256_mul_ps(x1, _mm256_loadu_ps(cos + e)));
      const __m256 r1 = Opaque(_mm256_mul_ps(_mm256_xor_ps(x2, sign), _mm256_loadu_ps(sin + e)));
      const __m256 a2 = Opaque(_mm256_mul_ps(x2, _mm256_loadu_ps(cos + e + half)));
      const __m256 r2 = Opaque(_mm256_mul_ps(x1, _mm256_loadu_ps(sin + e + half)));
      _mm256_storeu_ps(out + e, _mm256_add_ps(a1, r1));
      _mm256_storeu_ps(out + e + half, _mm256_add_ps(a2, r2));
    }
  }
}

void RopeRowsBf16Avx2(const uint16_t* x, int64_t heads, int64_t d, const uint16_t* cos, const uint16_t* sin,
                      uint16_t* out) {
  const int64_t half = d / 2;
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (int64_t h = 0; h < heads; ++h, x += d, out += d) {
    for (int64_t e = 0; e < half; e += 8) {
      const __m256 x1 = simd::LoadBf16x8(x + e), x2 = simd::LoadBf16x8(x + e + half);
      const __m256 a1 = simd::RoundBf16x8(_mm256_mul_ps(x1, simd::LoadBf16x8(cos + e)));
      const __m256 r1 = simd::RoundBf16x8(_mm256_mul_ps(_mm256_xor_ps(x2, sign), simd::LoadBf16x8(sin + e)));
      const __m256 a2 = simd::RoundBf16x8(_mm256_mul_ps(x2, simd::LoadBf16x8(cos + e + half)));
      const __m256 r2 = simd::RoundBf16x8(_mm256_mul_ps(x1, simd::LoadBf16x8(sin + e + half)));
      simd::StoreBf16x8(out + e, _mm256_add_ps(a1, r1));
      simd::StoreBf16x8(out + e + half, _mm256_add_ps(a2, r2));
    }
  }
}

void RowsAvx2(const Problem& p, int64_t row_begin, int64_t row_end) {
  if (p.w_bf16) {
    VisitRows(row_begin, row_end, p.m <= 2, [&](const int64_t* rows, int n) {
      n == 4 ? AllInputsBf16<4>(p, rows) : n == 2 ? AllInputsBf16<2>(p, rows) : AllInputsBf16<1>(p, rows);
    });
  } else {
    VisitRows(row_begin, row_end, p.m <= 4, [&](const int64_t* rows, int n) {
      n == 4 ? AllInputsF32<4>(p, rows) : n == 2 ? AllInputsF32<2>(p, rows) : AllInputsF32<1>(p, rows);
    });
  }
}

// e^x for x <= 0 (softmax after the max is subtracted): core/nn/exp_avx2.h.
using simd::ExpNonPositiveAvx2;

// Sums of 8 accumulators at once: [sum(a0), ..., sum(a7)].
inline __m256 HorizontalSums8(__m256 a0, __m256 a1, __m256 a2, __m256 a3, __m256 a4, __m256 a5, __m256 a6, __m256 a7) {
  const __m256 t0 = _mm256_hadd_ps(a0, a1), t1 = _mm256_hadd_ps(a2, a3);
  const __m256 t2 = _mm256_hadd_ps(a4, a5), t3 = _mm256_hadd_ps(a6, a7);
  const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

// Scores divided by scale, or multiplied by its reciprocal where that gives
// the same bits (ScaleIsPowerOfTwo).
inline __m256 ApplyScale(__m256 s, __m256 scale_v, __m256 inv_v, bool pow2) {
  return pow2 ? _mm256_mul_ps(s, inv_v) : _mm256_div_ps(s, scale_v);
}

// Eight consecutive fp32 or bf16 values as fp32 (bf16 widened exactly).
inline __m256 Load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 Load8(const uint16_t* p) { return simd::LoadBf16x8(p); }

template <typename T>
inline void ScoresImpl(const float* q, const T* k, int64_t len, int64_t dim, float scale, float* scores) {
  // Eight keys at a time (independent accumulators, summed together).
  const __m256 scale_v = _mm256_set1_ps(scale), inv_v = _mm256_set1_ps(1.0f / scale);
  const bool pow2 = ScaleIsPowerOfTwo(scale);
  int64_t l = 0;
  for (; l + 8 <= len; l += 8) {
    const T* k0 = k + l * dim;
    __m256 a[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) a[i] = _mm256_setzero_ps();
    for (int64_t d = 0; d < dim; d += 8) {
      const __m256 qv = _mm256_loadu_ps(q + d);
#pragma GCC unroll 8
      for (int i = 0; i < 8; ++i) a[i] = _mm256_fmadd_ps(qv, Load8(k0 + i * dim + d), a[i]);
    }
    _mm256_storeu_ps(scores + l,
                     ApplyScale(HorizontalSums8(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]), scale_v, inv_v, pow2));
  }
  for (; l < len; ++l) {
    __m256 a = _mm256_setzero_ps();
    for (int64_t d = 0; d < dim; d += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), Load8(k + l * dim + d), a);
    scores[l] = HorizontalSum(a) / scale;
  }
}

// out[0, 8 * kVectors) = sum_r p[r] * v[r * dim + (0, 8 * kVectors)], the
// accumulators in registers (a compile-time count, or GCC keeps them in
// memory).
template <int kVectors, typename T>
inline void WeightedRowsT(const float* p, const T* v, int64_t len, int64_t dim, float* out) {
  __m256 acc[kVectors];
#pragma GCC unroll 8
  for (int j = 0; j < kVectors; ++j) acc[j] = _mm256_setzero_ps();
  for (int64_t r = 0; r < len; ++r) {
    const __m256 pv = _mm256_broadcast_ss(p + r);
    const T* row = v + r * dim;
#pragma GCC unroll 8
    for (int j = 0; j < kVectors; ++j) acc[j] = _mm256_fmadd_ps(pv, Load8(row + 8 * j), acc[j]);
  }
#pragma GCC unroll 8
  for (int j = 0; j < kVectors; ++j) _mm256_storeu_ps(out + 8 * j, acc[j]);
}

template <typename T>
inline void ValuesImpl(const float* probs, const T* v, int64_t len, int64_t dim, float* out) {
  // 64 outputs (8 registers) at a time.
  for (int64_t d0 = 0; d0 < dim; d0 += 64) {
    switch ((dim - d0 < 64 ? dim - d0 : 64) / 8) {
      case 8:
        WeightedRowsT<8>(probs, v + d0, len, dim, out + d0);
        break;
      case 7:
        WeightedRowsT<7>(probs, v + d0, len, dim, out + d0);
        break;
      case 6:
        WeightedRowsT<6>(probs, v + d0, len, dim, out + d0);
        break;
      case 5:
        WeightedRowsT<5>(probs, v + d0, len, dim, out + d0);
        break;
      case 4:
        WeightedRowsT<4>(probs, v + d0, len, dim, out + d0);
        break;
      case 3:
        WeightedRowsT<3>(probs, v + d0, len, dim, out + d0);
        break;
      case 2:
        WeightedRowsT<2>(probs, v + d0, len, dim, out + d0);
        break;
      default:
        WeightedRowsT<1>(probs, v + d0, len, dim, out + d0);
        break;
    }
  }
}

void SegmentScoresAvx2(const float* q, const float* k, int64_t len, int64_t dim, float scale, float* scores) {
  ScoresImpl(q, k, len, dim, scale, scores);
}
void SegmentScoresBf16Avx2(const float* q, const uint16_t* k, int64_t len, int64_t dim, float scale, float* scores) {
  ScoresImpl(q, k, len, dim, scale, scores);
}

Segment SegmentSoftmaxAvx2(float* scores, int64_t len) {
  Segment seg;
  seg.max = scores[0];
  int64_t i = 0;
  if (len >= 8) {
    // (max is exact: any order gives the same value.)
    __m256 m = _mm256_loadu_ps(scores);
    for (i = 8; i + 8 <= len; i += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(scores + i));
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, m);
    for (float x : lanes) seg.max = x > seg.max ? x : seg.max;
  }
  for (; i < len; ++i) seg.max = scores[i] > seg.max ? scores[i] : seg.max;
  const __m256 mv = _mm256_set1_ps(seg.max);
  __m256 sv = _mm256_setzero_ps();
  int64_t l = 0;
  for (; l + 8 <= len; l += 8) {
    const __m256 e = ExpNonPositiveAvx2(_mm256_sub_ps(_mm256_loadu_ps(scores + l), mv));
    _mm256_storeu_ps(scores + l, e);
    sv = _mm256_add_ps(sv, e);
  }
  seg.sum = HorizontalSum(sv);
  for (; l < len; ++l) {
    float tail[8] = {scores[l] - seg.max, 0, 0, 0, 0, 0, 0, 0};
    float e[8];
    _mm256_storeu_ps(e, ExpNonPositiveAvx2(_mm256_loadu_ps(tail)));
    scores[l] = e[0];
    seg.sum += e[0];
  }
  return seg;
}

void SegmentValuesAvx2(const float* probs, const float* v, int64_t len, int64_t dim, float* out) {
  ValuesImpl(probs, v, len, dim, out);
}
void SegmentValuesBf16Avx2(const float* probs, const uint16_t* v, int64_t len, int64_t dim, float* out) {
  ValuesImpl(probs, v, len, dim, out);
}

namespace {

// Scores of G query heads (rows of q, stride dim) against the keys of one
// block: each key row is loaded and widened once for the G heads (GQA),
// instead of once per head. Per head and key the same fp32 FMAs in the same
// order as ScoresImpl, eight keys reduced together (HorizontalSums8) and a
// last partial eight one by one (HorizontalSum), so the scores are the same
// bits as SegmentScores*Avx2 called per head and block.
template <int G, typename T>
void ScoresGroupBlock(const float* q, const T* k, int64_t n, int64_t dim, float scale, float* scores, int64_t stride) {
  const __m256 scale_v = _mm256_set1_ps(scale), inv_v = _mm256_set1_ps(1.0f / scale);
  const bool pow2 = ScaleIsPowerOfTwo(scale);
  auto dots = [&](const T* kr, __m256* acc) {
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) acc[g] = _mm256_setzero_ps();
    for (int64_t d = 0; d < dim; d += 8) {
      const __m256 kv = Load8(kr + d);
#pragma GCC unroll 8
      for (int g = 0; g < G; ++g) acc[g] = _mm256_fmadd_ps(_mm256_loadu_ps(q + g * dim + d), kv, acc[g]);
    }
  };
  int64_t l = 0;
  for (; l + 8 <= n; l += 8) {
    __m256 keys[G][8];
    for (int i = 0; i < 8; ++i) {
      __m256 acc[G];
      dots(k + (l + i) * dim, acc);
#pragma GCC unroll 8
      for (int g = 0; g < G; ++g) keys[g][i] = acc[g];
    }
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) {
      const __m256* a = keys[g];
      _mm256_storeu_ps(
          scores + g * stride + l,
          ApplyScale(HorizontalSums8(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]), scale_v, inv_v, pow2));
    }
  }
  for (; l < n; ++l) {
    __m256 acc[G];
    dots(k + l * dim, acc);
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) scores[g * stride + l] = HorizontalSum(acc[g]) / scale;
  }
}

// Software prefetch of [p, p + bytes) into L1, or into L2 (kHint
// _MM_HINT_T1).
template <int kHint = _MM_HINT_T0>
inline void PrefetchBytes(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t i = 0; i < bytes; i += 64) _mm_prefetch(c + i, static_cast<_mm_hint>(kHint));
}

template <typename T>
void ScoresGroupsAvx2(const float* q, int64_t heads, const T* const* blocks, int64_t bs, int64_t len, int64_t dim,
                      float scale, float* scores, int64_t stride, const T* const* values) {
  using Fn = void (*)(const float*, const T*, int64_t, int64_t, float, float*, int64_t);
  static constexpr Fn kGroups[8] = {ScoresGroupBlock<1, T>, ScoresGroupBlock<2, T>, ScoresGroupBlock<3, T>,
                                    ScoresGroupBlock<4, T>, ScoresGroupBlock<5, T>, ScoresGroupBlock<6, T>,
                                    ScoresGroupBlock<7, T>, ScoresGroupBlock<8, T>};
  const int64_t block_bytes = bs * dim * static_cast<int64_t>(sizeof(T));
  for (int64_t h0 = 0; h0 < heads; h0 += 8) {
    const int64_t g = std::min<int64_t>(8, heads - h0);
    for (int64_t b = 0; b * bs < len; ++b) {
      if (h0 == 0) {
        // The next block's keys (into L1) and this block's values (into L2:
        // a segment's values outgrow L1, and they are read after the
        // softmax) prefetched while this block is scored: measured 8-12%
        // less time per token over a cache per layer read from memory
        // (bench_gemv, A/B interleaved in one run).
        if (b == 0) PrefetchBytes(blocks[0], block_bytes);
        if ((b + 1) * bs < len) PrefetchBytes(blocks[b + 1], block_bytes);
        if (values != nullptr) PrefetchBytes<_MM_HINT_T1>(values[b], block_bytes);
      }
      kGroups[g - 1](q + h0 * dim, blocks[b], std::min(bs, len - b * bs), dim, scale, scores + h0 * stride + b * bs,
                     stride);
    }
  }
}

// A few blocks (>= 16 rows) at a time: their rows stay in L1 for all the
// 8-value column passes (the next blocks prefetched meanwhile), each pass's
// G accumulators carried from one piece to the next through `out`, so the
// same FMAs run in the same order as one pass over all rows. Against one
// pass per 8 columns over the whole segment (512 rows of 128-256 bytes:
// more than L1): 17-22% less time per token for the whole attention of 24
// layers over 2500 positions, bf16 and fp32 caches alike (bench_gemv, A/B
// interleaved, the caches read from memory).
template <int G, typename T>
void ValuesGroupAvx2(const float* probs, int64_t probs_stride, const T* const* blocks, int64_t bs, int64_t len,
                     int64_t dim, float* out, int64_t out_stride) {
  const int64_t per_piece = std::max<int64_t>(1, (16 + bs - 1) / bs);  // blocks
  const int64_t nb = (len + bs - 1) / bs, block_bytes = bs * dim * static_cast<int64_t>(sizeof(T));
  for (int64_t b0 = 0; b0 < nb; b0 += per_piece) {
    const int64_t b1 = std::min(nb, b0 + per_piece);
    for (int64_t b = b1; b < std::min(nb, b1 + per_piece); ++b) PrefetchBytes(blocks[b], block_bytes);
    for (int64_t d0 = 0; d0 < dim; d0 += 8) {
      __m256 acc[G];
#pragma GCC unroll 8
      for (int g = 0; g < G; ++g) acc[g] = b0 == 0 ? _mm256_setzero_ps() : _mm256_loadu_ps(out + g * out_stride + d0);
      for (int64_t b = b0; b < b1; ++b) {
        const T* rows = blocks[b] + d0;
        const int64_t l0 = b * bs, n = std::min(bs, len - l0);
        for (int64_t r = 0; r < n; ++r) {
          const __m256 v = Load8(rows + r * dim);
#pragma GCC unroll 8
          for (int g = 0; g < G; ++g)
            acc[g] = _mm256_fmadd_ps(_mm256_broadcast_ss(probs + g * probs_stride + l0 + r), v, acc[g]);
        }
      }
#pragma GCC unroll 8
      for (int g = 0; g < G; ++g) _mm256_storeu_ps(out + g * out_stride + d0, acc[g]);
    }
  }
}

template <typename T>
void ValuesGroupsAvx2(const float* probs, int64_t probs_stride, int64_t heads, const T* const* blocks, int64_t bs,
                      int64_t len, int64_t dim, float* out, int64_t out_stride) {
  using Fn = void (*)(const float*, int64_t, const T* const*, int64_t, int64_t, int64_t, float*, int64_t);
  static constexpr Fn kGroups[8] = {ValuesGroupAvx2<1, T>, ValuesGroupAvx2<2, T>, ValuesGroupAvx2<3, T>,
                                    ValuesGroupAvx2<4, T>, ValuesGroupAvx2<5, T>, ValuesGroupAvx2<6, T>,
                                    ValuesGroupAvx2<7, T>, ValuesGroupAvx2<8, T>};
  for (int64_t h0 = 0; h0 < heads; h0 += 8) {
    const int64_t g = std::min<int64_t>(8, heads - h0);
    kGroups[g - 1](probs + h0 * probs_stride, probs_stride, blocks, bs, len, dim, out + h0 * out_stride, out_stride);
  }
}

}  // namespace

void SegmentScoresGroupAvx2(const float* q, int64_t heads, const float* const* blocks, int64_t bs, int64_t len,
                            int64_t dim, float scale, float* scores, int64_t stride, const float* const* values) {
  ScoresGroupsAvx2(q, heads, blocks, bs, len, dim, scale, scores, stride, values);
}
void SegmentScoresGroupBf16Avx2(const float* q, int64_t heads, const uint16_t* const* blocks, int64_t bs, int64_t len,
                                int64_t dim, float scale, float* scores, int64_t stride,
                                const uint16_t* const* values) {
  ScoresGroupsAvx2(q, heads, blocks, bs, len, dim, scale, scores, stride, values);
}
void SegmentValuesGroupAvx2(const float* probs, int64_t probs_stride, int64_t heads, const float* const* blocks,
                            int64_t bs, int64_t len, int64_t dim, float* out, int64_t out_stride) {
  ValuesGroupsAvx2(probs, probs_stride, heads, blocks, bs, len, dim, out, out_stride);
}
void SegmentValuesGroupBf16Avx2(const float* probs, int64_t probs_stride, int64_t heads, const uint16_t* const* blocks,
                                int64_t bs, int64_t len, int64_t dim, float* out, int64_t out_stride) {
  ValuesGroupsAvx2(probs, probs_stride, heads, blocks, bs, len, dim, out, out_stride);
}

}  // namespace internvl::llm::gemv
