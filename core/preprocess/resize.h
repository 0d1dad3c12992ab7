// Bicubic resize bit-exact with Pillow 9.4's `Image.resize(size, BICUBIC)` on
// 8-bit RGB (src/libImaging/Resample.c: precompute_coeffs,
// normalize_coeffs_8bpc, ImagingResampleHorizontal_8bpc /
// ImagingResampleVertical_8bpc, ImagingResampleInner). The official InternVL
// `dynamic_preprocess` resizes with exactly this (Pillow's default filter for
// Image.resize), so reproducing it gives the same uint8 tiles.
//
// The arithmetic, in short: a separable filter (Keys cubic, a = -0.5, support
// 2), whose support is widened by the scale factor when downscaling
// (antialiasing); per output pixel the taps are normalised to sum 1 in double,
// then turned into 22-bit fixed point (PRECISION_BITS = 32 - 8 - 2); each
// pass accumulates int32 with a 1 << 21 rounding term, shifts and clamps to
// uint8. The horizontal pass runs first, only over the source rows the
// vertical pass reads; a pass whose dimension is unchanged is skipped.
// OpenCV's INTER_CUBIC is a different filter and must not be substituted.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/preprocess/image.h"

namespace internvl::preprocess {

// The taps of one resampling axis (Pillow's `bounds` + fixed-point `kk`):
// output i reads `count[i]` source samples starting at `first[i]`, weighted
// by coeffs[i * ksize + t]. Depends only on (in_size, out_size), so callers
// resizing many images of one size can build it once.
struct ResampleAxis {
  int in_size = 0;
  int out_size = 0;
  int ksize = 0;
  std::vector<int> first;
  std::vector<int> count;
  std::vector<int32_t> coeffs;
};

// As Pillow's precompute_coeffs + normalize_coeffs_8bpc for the BICUBIC filter
// and the box (0, in_size). Requires in_size > 0 and out_size > 0.
ResampleAxis ComputeBicubicAxis(int in_size, int out_size);

// One Pillow-exact resize of in_width x in_height to out_width x out_height,
// planned once (the axes' taps) and run in pieces, so that callers can spread
// it over threads and write the result where they want it (DynamicPreprocess
// writes straight into the tiles):
//   1. Horizontal(): rows [begin, end) of the intermediate image
//      (intermediate_rows() rows of out_width pixels), any split, any order;
//   2. after ALL intermediate rows are done, Vertical(): any rectangle of the
//      output, from the intermediate.
// A pass whose dimension is unchanged is skipped as Pillow does: with no
// horizontal pass intermediate_rows() is 0 and Vertical reads the input.
// Uses the AVX2 kernels when UseAvx2Kernels() (runtime.h); same bytes either way.
class PilBicubicResize {
 public:
  PilBicubicResize(int in_width, int in_height, int out_width, int out_height);

  int out_width() const { return out_width_; }
  int out_height() const { return out_height_; }
  int intermediate_rows() const { return need_horizontal_ ? intermediate_rows_ : 0; }
  size_t intermediate_bytes() const { return static_cast<size_t>(intermediate_rows()) * out_width_ * kRgbChannels; }

  // The input row intermediate row r is made from (the horizontal pass
  // reads that one row only).
  int input_row(int r) const { return row_offset_ + r; }

  // `in` is the input image's pixels: in_width * in_height RGB pixels, rows
  // packed (RgbImage::data).
  // Writes intermediate rows [begin, end) to `intermediate` (which holds all
  // intermediate_bytes(); row r at r * out_width * 3).
  void Horizontal(const uint8_t* in, int begin, int end, uint8_t* intermediate) const;
  // Writes output pixels [x0, x1) x [y0, y1) to dst: row y0 at dst, rows
  // dst_stride bytes apart.
  void Vertical(const uint8_t* in, const uint8_t* intermediate, int x0, int x1, int y0, int y1, uint8_t* dst,
                size_t dst_stride) const;

 private:
  int in_width_, out_width_, out_height_;
  bool need_horizontal_, need_vertical_;
  // Source rows the vertical pass reads: [row_offset_, row_offset_ + intermediate_rows_).
  int row_offset_ = 0;
  int intermediate_rows_ = 0;
  ResampleAxis horiz_, vert_;
  bool avx2_ = false;
  std::vector<int16_t> avx2_taps_;  // internal::PackAvx2HorizontalTaps(horiz_)
};

// Resizes `image` to width x height (both > 0) exactly as Pillow 9.4's
// Image.resize((width, height), Image.BICUBIC) on an RGB image. Returns a copy
// when the size is unchanged (as Pillow does). Runs on up to
// GetPreprocessRuntime().threads threads.
RgbImage ResizeBicubicPil(const RgbImage& image, int width, int height);

}  // namespace internvl::preprocess
