// The AVX2 kernels of resize_kernels.h. This file alone is compiled with
// -mavx2; resize.cc only calls into it when the CPU reports AVX2.
#include <immintrin.h>

#include <cstring>

#include "core/preprocess/resize_kernels.h"

namespace internvl::preprocess::internal {

// Each 128-bit lane receives the same 16 source bytes (4 RGB pixels and 4
// spare bytes); lane 0 takes pixels 0 and 1, lane 1 pixels 2 and 3, as int16
// pairs per channel: [R0 R1 G0 G1 B0 B1 0 0] so that vpmaddwd against
// [k0 k1 k0 k1 k0 k1 0 0] sums two taps per channel. One output pixel's sums:
// per lane [R G B 0] as int32, the two lanes still to be added.
namespace {

inline __m256i PixelSums(const uint8_t* s, const int16_t* k, int groups, __m256i shuffle) {
  constexpr int kGroupBytes = kAvx2TapsPerGroup * kRgbChannels;
  __m256i lo = _mm256_setzero_si256();
  __m256i hi = _mm256_setzero_si256();
  for (int g = 0; g < groups; ++g, s += kGroupBytes, k += kAvx2GroupInt16s) {
    const __m256i px =
        _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s))), shuffle);
    lo = _mm256_add_epi32(lo, _mm256_madd_epi16(px, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(k))));
    hi = _mm256_add_epi32(hi, _mm256_madd_epi16(px, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(k + 16))));
  }
  return _mm256_add_epi32(_mm256_slli_epi32(hi, 16), lo);
}

// Two pixels' sums (lanes added): [R G B 0] of a, then of b; rounded and
// shifted as clip8 before its clamp.
inline __m256i Finish2(__m256i a, __m256i b) {
  const __m256i sum = _mm256_add_epi32(_mm256_permute2x128_si256(a, b, 0x20), _mm256_permute2x128_si256(a, b, 0x31));
  return _mm256_srai_epi32(_mm256_add_epi32(sum, _mm256_set1_epi32(kRoundingTerm)), kPrecisionBits);
}

}  // namespace

void HorizontalRowAvx2(const uint8_t* src, const ResampleAxis& axis, const int16_t* taps, uint8_t* dst) {
  const __m256i shuffle = _mm256_setr_epi8(0, -1, 3, -1, 1, -1, 4, -1, 2, -1, 5, -1, -1, -1, -1, -1,  //
                                           6, -1, 9, -1, 7, -1, 10, -1, 8, -1, 11, -1, -1, -1, -1, -1);
  // Four pixels' [R G B 0] bytes to 12 bytes R G B.
  const __m128i compact = _mm_setr_epi8(0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1);
  const int groups = Avx2Groups(axis);
  const int64_t pixel_taps = static_cast<int64_t>(groups) * kAvx2GroupInt16s;
  auto source = [&](int xx) { return src + static_cast<size_t>(axis.first[xx]) * kRgbChannels; };
  int xx = 0;
  // Four output pixels at a time: their sums reduced, rounded and packed
  // together (the per-pixel tail below costs as much as a pixel's taps).
  for (; xx + 4 <= axis.out_size; xx += 4) {
    const int16_t* k = taps + xx * pixel_taps;
    const __m256i s0 = PixelSums(source(xx), k, groups, shuffle);
    const __m256i s1 = PixelSums(source(xx + 1), k + pixel_taps, groups, shuffle);
    const __m256i s2 = PixelSums(source(xx + 2), k + 2 * pixel_taps, groups, shuffle);
    const __m256i s3 = PixelSums(source(xx + 3), k + 3 * pixel_taps, groups, shuffle);
    // int32 -> int16 -> uint8 with saturation (clip8's clamp): lane 0 holds
    // pixels 0 and 2, lane 1 pixels 1 and 3, interleaved back by the unpack.
    const __m256i words = _mm256_packs_epi32(Finish2(s0, s1), Finish2(s2, s3));
    const __m256i bytes = _mm256_packus_epi16(words, words);
    const __m128i rgb = _mm_shuffle_epi8(
        _mm_unpacklo_epi32(_mm256_castsi256_si128(bytes), _mm256_extracti128_si256(bytes, 1)), compact);
    uint8_t* d = dst + static_cast<size_t>(xx) * kRgbChannels;
    if (axis.out_size - xx >= 6) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(d), rgb);  // the last 4 bytes are the next pixels'
    } else {
      alignas(16) uint8_t out[16];
      _mm_store_si128(reinterpret_cast<__m128i*>(out), rgb);
      std::memcpy(d, out, 4 * kRgbChannels);
    }
  }
  for (; xx < axis.out_size; ++xx) {
    const __m256i sum = PixelSums(source(xx), taps + xx * pixel_taps, groups, shuffle);
    __m128i acc = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
    acc = _mm_srai_epi32(_mm_add_epi32(acc, _mm_set1_epi32(kRoundingTerm)), kPrecisionBits);
    // Saturating packs clamp to [0, 255] as clip8 does.
    acc = _mm_packus_epi16(_mm_packs_epi32(acc, acc), acc);
    const uint32_t rgbx = static_cast<uint32_t>(_mm_cvtsi128_si32(acc));
    uint8_t* d = dst + static_cast<size_t>(xx) * kRgbChannels;
    if (xx + 1 < axis.out_size) {
      std::memcpy(d, &rgbx, sizeof(rgbx));  // the 4th byte is overwritten by the next pixel
    } else {
      std::memcpy(d, &rgbx, kRgbChannels);
    }
  }
}

void VerticalSpanAvx2(const uint8_t* src, size_t src_stride, int count, const int32_t* k, size_t len, uint8_t* dst) {
  constexpr size_t kBlock = 32;
  // packs/packus work per 128-bit lane; this puts the 4-byte groups back in order.
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  size_t i = 0;
  for (; i + kBlock <= len; i += kBlock) {
    __m256i a0 = _mm256_set1_epi32(kRoundingTerm), a1 = a0, a2 = a0, a3 = a0;
    const uint8_t* p = src + i;
    for (int t = 0; t < count; ++t, p += src_stride) {
      const __m256i w = _mm256_set1_epi32(k[t]);
      auto tap = [&](int offset) {
        return _mm256_mullo_epi32(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + offset))),
                                  w);
      };
      a0 = _mm256_add_epi32(a0, tap(0));
      a1 = _mm256_add_epi32(a1, tap(8));
      a2 = _mm256_add_epi32(a2, tap(16));
      a3 = _mm256_add_epi32(a3, tap(24));
    }
    a0 = _mm256_srai_epi32(a0, kPrecisionBits);
    a1 = _mm256_srai_epi32(a1, kPrecisionBits);
    a2 = _mm256_srai_epi32(a2, kPrecisionBits);
    a3 = _mm256_srai_epi32(a3, kPrecisionBits);
    const __m256i bytes = _mm256_packus_epi16(_mm256_packs_epi32(a0, a1), _mm256_packs_epi32(a2, a3));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), _mm256_permutevar8x32_epi32(bytes, order));
  }
  for (; i < len; ++i) {
    int32_t acc = kRoundingTerm;
    for (int t = 0; t < count; ++t) acc += src[t * src_stride + i] * k[t];
    dst[i] = Clip8(acc);
  }
}

}  // namespace internvl::preprocess::internal
