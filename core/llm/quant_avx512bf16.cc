// Batched decode products over int8 weights with bf16 inputs, on CPUs with
// AVX-512-BF16 (this file alone is compiled with -mavx512f -mavx512bw
// -mavx512vl -mavx512bf16 -mfma; quant.cc checks the CPU at run time). See
// quant_kernels.h (Int8WideProblem) for the arithmetic.
//
// With many input rows a product is bound by its arithmetic, not by its
// weights' bytes: each group of 4 weight rows is widened to bf16 once, into
// a buffer that stays in L1/L2, and every input row then costs one vdpbf16ps
// per 32 weights, as the bf16 kernel's 4 x 4 blocks (gemv_avx512bf16.cc),
// while the weights still stream from memory at one byte each.
// GCC 12's AVX-512 headers leave lanes undefined on purpose in casts and
// conversions, which -Wmaybe-uninitialized reports inside the intrinsics.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <type_traits>
#include <vector>

#include "core/llm/quant_kernels.h"
#include "core/llm/simd_avx512.h"

namespace internvl::llm::quant {
namespace {

// Row r's first n32 (a multiple of 32, <= inp) weights as bf16 bits: the
// integers themselves (exact).
void Widen(const Int8WideProblem& p, int64_t r, int64_t n32, uint16_t* out) {
  const int8_t* w = p.w + r * p.inp;
  for (int64_t k = 0; k < n32; k += 32) {
    const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + k));
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + k + 16));
    const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(a)), hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b));
    _mm512_storeu_si512(out + k, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
  }
}

// acc[i][m] = the lanes of dot(w[i], x[m0 + m]) over `in` inputs (w rows at
// w + i * ld, zero past `in` up to a multiple of 32; x rows of `in`, the last
// chunk masked). `pf` (null or the next rows' bytes, up to pf_end) gets one
// line prefetched into L2 per 32 inputs.
template <int kRows, int M>
__attribute__((always_inline)) inline void Dots(const uint16_t* w, int64_t ld, const uint16_t* x, int64_t in,
                                                int64_t m0, __m512 (&acc)[kRows][M], const char*& pf,
                                                const char* pf_end) {
#pragma GCC unroll 4
  for (int i = 0; i < kRows; ++i)
#pragma GCC unroll 4
    for (int m = 0; m < M; ++m) acc[i][m] = _mm512_setzero_ps();
  for (int64_t k = 0; k < in; k += 32) {
    if (pf < pf_end) {
      _mm_prefetch(pf, _MM_HINT_T1);
      pf += 64;
    }
    const __mmask32 mask = in - k >= 32 ? ~__mmask32{0} : (__mmask32{1} << (in - k)) - 1;
    __m512bh xv[M];
#pragma GCC unroll 4
    for (int m = 0; m < M; ++m) xv[m] = (__m512bh)_mm512_maskz_loadu_epi16(mask, x + (m0 + m) * in + k);
#pragma GCC unroll 4
    for (int i = 0; i < kRows; ++i) {
      const __m512bh wv = (__m512bh)_mm512_loadu_si512(w + i * ld + k);
#pragma GCC unroll 4
      for (int m = 0; m < M; ++m) acc[i][m] = _mm512_dpbf16_ps(acc[i][m], wv, xv[m]);
    }
  }
}

// Output rows r .. r + kRows of input rows m0 .. m0 + M from the widened
// rows: the lane sums, times the row scale, plus the bias.
template <int kRows, int M>
__attribute__((always_inline)) inline void Finish(const Int8WideProblem& p, int64_t r, int64_t m0,
                                                  const __m512 (&acc)[kRows][M]) {
  if constexpr (kRows == 4 && M == 4) {
    __m512 sums = _mm512_mul_ps(simd::Sums4x4(acc), simd::PerRow4x4(_mm_loadu_ps(p.scale + r)));
    if (p.bias != nullptr) sums = _mm512_add_ps(sums, simd::PerRow4x4(_mm_loadu_ps(p.bias + r)));
    return simd::Store4x4Lanes(p, r, m0, sums);
  }
#pragma GCC unroll 4
  for (int m = 0; m < M; ++m) {
    float sums[kRows];
    simd::ReduceAddColumn(acc, m, sums);
#pragma GCC unroll 4
    for (int i = 0; i < kRows; ++i) {
      float y = sums[i] * p.scale[r + i];
      if (p.bias != nullptr) y += p.bias[r + i];
      StoreY(p, (m0 + m) * p.out + r + i, y);
    }
  }
}

template <int kRows>
void Rows(const Int8WideProblem& p, int64_t r, const uint16_t* w, int64_t ld, const char*& pf, const char* pf_end) {
  int64_t m0 = 0;
  for (; m0 + 4 <= p.m; m0 += 4) {
    __m512 acc[kRows][4];
    Dots<kRows, 4>(w, ld, p.x, p.in, m0, acc, pf, pf_end);
    Finish<kRows, 4>(p, r, m0, acc);
  }
  auto rest = [&](auto tag) {
    constexpr int M = decltype(tag)::value;
    __m512 acc[kRows][M];
    Dots<kRows, M>(w, ld, p.x, p.in, m0, acc, pf, pf_end);
    Finish<kRows, M>(p, r, m0, acc);
  };
  switch (p.m - m0) {
    case 1:
      return rest(std::integral_constant<int, 1>());
    case 2:
      return rest(std::integral_constant<int, 2>());
    case 3:
      return rest(std::integral_constant<int, 3>());
    default:
      return;
  }
}

}  // namespace

void Int8WideRowsAvx512Bf16(const Int8WideProblem& p, int64_t row_begin, int64_t row_end) {
  const int64_t ld = (p.in + 31) / 32 * 32;
  thread_local std::vector<uint16_t> t_w;
  if (t_w.size() < static_cast<size_t>(4 * ld)) t_w.resize(static_cast<size_t>(4 * ld));
  uint16_t* w = t_w.data();
  int64_t r = row_begin;
  for (; r + 4 <= row_end; r += 4) {
    for (int i = 0; i < 4; ++i) Widen(p, r + i, ld, w + i * ld);
    // The next 4 rows (adjacent in memory) into L2 while these are multiplied.
    const char* pf = r + 8 <= row_end ? reinterpret_cast<const char*>(p.w + (r + 4) * p.inp) : nullptr;
    const char* pf_end = pf == nullptr ? nullptr : pf + 4 * p.inp;
    Rows<4>(p, r, w, ld, pf, pf_end);
  }
  for (; r < row_end; ++r) {
    Widen(p, r, ld, w);
    const char* none = nullptr;
    Rows<1>(p, r, w, ld, none, none);
  }
}

}  // namespace internvl::llm::quant
