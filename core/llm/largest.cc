#include "core/llm/largest.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace internvl::llm {
namespace {

inline float ValueAt(const float* v, int64_t i) { return v[i]; }
inline float ValueAt(const uint16_t* v, int64_t i) { return std::bit_cast<float>(static_cast<uint32_t>(v[i]) << 16); }

// Whether any of values[i, i + 16) is above t (NaN: no).
inline bool AnyAbove(const float* v, float t) {
#if defined(__SSE2__)
  const __m128 tv = _mm_set1_ps(t);
  const __m128 a = _mm_or_ps(_mm_cmpgt_ps(_mm_loadu_ps(v), tv), _mm_cmpgt_ps(_mm_loadu_ps(v + 4), tv));
  const __m128 b = _mm_or_ps(_mm_cmpgt_ps(_mm_loadu_ps(v + 8), tv), _mm_cmpgt_ps(_mm_loadu_ps(v + 12), tv));
  return _mm_movemask_ps(_mm_or_ps(a, b)) != 0;
#else
  int above = 0;
  for (int j = 0; j < 16; ++j) above |= v[j] > t;
  return above != 0;
#endif
}
inline bool AnyAbove(const uint16_t* v, float t) {
#if defined(__SSE2__)
  // bf16 bits in the high halves of zeroed 32-bit lanes: the fp32 values.
  const __m128 tv = _mm_set1_ps(t);
  const __m128i z = _mm_setzero_si128();
  const __m128i lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(v));
  const __m128i hi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(v + 8));
  auto gt = [&](__m128i bits) { return _mm_cmpgt_ps(_mm_castsi128_ps(bits), tv); };
  const __m128 a = _mm_or_ps(gt(_mm_unpacklo_epi16(z, lo)), gt(_mm_unpackhi_epi16(z, lo)));
  const __m128 b = _mm_or_ps(gt(_mm_unpacklo_epi16(z, hi)), gt(_mm_unpackhi_epi16(z, hi)));
  return _mm_movemask_ps(_mm_or_ps(a, b)) != 0;
#else
  int above = 0;
  for (int j = 0; j < 16; ++j) above |= ValueAt(v, j) > t;
  return above != 0;
#endif
}

// LargestIndices over fp32 or bf16 values.
template <typename T>
void Largest(const T* values, int64_t n, int64_t k, int64_t* out) {
  // A heap of the k best so far with the worst on top: lower values (NaN
  // lowest), and among equal ones the later index, are worse. Outputs come
  // in index order, so a later one replaces the worst only when strictly
  // greater; blocks of 16 are passed over at one (SSE2) test where none
  // is, nearly all of a vocabulary once the heap holds the leaders.
  struct Entry {
    float v;
    int64_t i;
  };
  auto rank = [&](int64_t i) {
    const float v = ValueAt(values, i);
    return std::isnan(v) ? -std::numeric_limits<float>::infinity() : v;
  };
  auto worse_on_top = [](const Entry& a, const Entry& b) { return a.v > b.v || (a.v == b.v && a.i < b.i); };
  std::vector<Entry> heap;
  heap.reserve(static_cast<size_t>(k));
  int64_t i = 0;
  for (; i < k; ++i) heap.push_back({rank(i), i});
  std::make_heap(heap.begin(), heap.end(), worse_on_top);
  auto offer = [&](int64_t j) {
    const float v = rank(j);
    if (v > heap.front().v) {
      std::pop_heap(heap.begin(), heap.end(), worse_on_top);
      heap.back() = {v, j};
      std::push_heap(heap.begin(), heap.end(), worse_on_top);
    }
  };
  constexpr int64_t kBlock = 16;
  for (; i < n && i % kBlock != 0; ++i) offer(i);
  for (; i + kBlock <= n; i += kBlock) {
    if (!AnyAbove(values + i, heap.front().v)) continue;
    for (int64_t j = 0; j < kBlock; ++j) offer(i + j);
  }
  for (; i < n; ++i) offer(i);
  for (int64_t j = 0; j < k; ++j) out[j] = heap[static_cast<size_t>(j)].i;
}

}  // namespace

void LargestIndices(const void* values, bool bf16, int64_t n, int64_t k, int64_t* out) {
  if (k <= 0) return;
  bf16 ? Largest(static_cast<const uint16_t*>(values), n, k, out)
       : Largest(static_cast<const float*>(values), n, k, out);
}

}  // namespace internvl::llm
