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

// Resizes `image` to width x height (both > 0) exactly as Pillow 9.4's
// Image.resize((width, height), Image.BICUBIC) on an RGB image. Returns a copy
// when the size is unchanged (as Pillow does).
RgbImage ResizeBicubicPil(const RgbImage& image, int width, int height);

}  // namespace internvl::preprocess
