// Inner loops of the Pillow-exact bicubic resize (resize.cc), in a portable
// version and an AVX2 one (resize_avx2.cc, compiled with -mavx2 and only
// called when the CPU has AVX2). Both compute Pillow's int32 fixed-point sums
// exactly, so they give identical bytes. Internal to core/preprocess.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/preprocess/resize.h"

namespace internvl::preprocess::internal {

// Pillow's PRECISION_BITS: 8 bits of result, 2 bits of headroom for filters
// whose partial sums leave [0, 1], in an int32.
inline constexpr int kPrecisionBits = 32 - 8 - 2;
inline constexpr int32_t kRoundingTerm = int32_t{1} << (kPrecisionBits - 1);

// As Resample.c's clip8: the accumulator carries kPrecisionBits fraction bits;
// Pillow's lookup table clamps the integer part to [0, 255].
inline uint8_t Clip8(int32_t acc) {
  const int32_t v = acc >> kPrecisionBits;
  return static_cast<uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
}

// The AVX2 horizontal kernel takes 4 taps per step with vpmaddwd, which
// multiplies int16s: each 22-bit coefficient k is split as k = hi * 2^16 + lo
// with lo a signed int16, so sum(s * k) = (sum(s * hi) << 16) + sum(s * lo),
// exact in wrapping int32 arithmetic (and Pillow's sums fit an int32).
inline constexpr int kAvx2TapsPerGroup = 4;
// int16 coefficients per group: a 256-bit vector of lo, then one of hi.
inline constexpr int kAvx2GroupInt16s = 32;

inline int Avx2Groups(const ResampleAxis& axis) { return (axis.ksize + kAvx2TapsPerGroup - 1) / kAvx2TapsPerGroup; }
// The coefficients in the kernel's layout: [out_size][Avx2Groups][kAvx2GroupInt16s].
std::vector<int16_t> PackAvx2HorizontalTaps(const ResampleAxis& axis);

// Zero bytes a source row needs after its last pixel so that every kernel's
// loads (padded tap groups, 16-byte loads) stay inside the row buffer.
inline size_t HorizontalRowPadding(const ResampleAxis& axis) {
  const size_t taps = (static_cast<size_t>(axis.ksize) + kAvx2TapsPerGroup - 1) / kAvx2TapsPerGroup * kAvx2TapsPerGroup;
  return taps * kRgbChannels + 16;
}

// One output row of the horizontal pass. `src` is the source row followed by
// HorizontalRowPadding(axis) zero bytes; dst gets axis.out_size RGB pixels.
void HorizontalRowPortable(const uint8_t* src, const ResampleAxis& axis, uint8_t* dst);
// `taps` from PackAvx2HorizontalTaps(axis).
void HorizontalRowAvx2(const uint8_t* src, const ResampleAxis& axis, const int16_t* taps, uint8_t* dst);

// One output row span of the vertical pass: dst[i] = clip8(round + sum_t
// k[t] * src[t * src_stride + i]) for i in [0, len).
void VerticalSpanPortable(const uint8_t* src, size_t src_stride, int count, const int32_t* k, size_t len, uint8_t* dst);
void VerticalSpanAvx2(const uint8_t* src, size_t src_stride, int count, const int32_t* k, size_t len, uint8_t* dst);

}  // namespace internvl::preprocess::internal
