#include "core/preprocess/resize.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace internvl::preprocess {
namespace {

// Pillow's PRECISION_BITS: 8 bits of result, 2 bits of headroom for filters
// whose partial sums leave [0, 1], in an int32.
constexpr int kPrecisionBits = 32 - 8 - 2;
constexpr int32_t kRoundingTerm = int32_t{1} << (kPrecisionBits - 1);
// Pillow's BICUBIC filter: Keys' cubic convolution with a = -0.5, support 2.
constexpr double kBicubicA = -0.5;
constexpr double kBicubicSupport = 2.0;

// As Resample.c's bicubic_filter (same operation order, so the same doubles).
double BicubicFilter(double x) {
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((kBicubicA + 2.0) * x - (kBicubicA + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * kBicubicA;
  return 0.0;
}

// As Resample.c's clip8: the accumulator carries kPrecisionBits fraction bits;
// Pillow's lookup table clamps the integer part to [0, 255].
inline uint8_t Clip8(int32_t acc) {
  const int32_t v = acc >> kPrecisionBits;
  return static_cast<uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
}

// ImagingResampleVertical_8bpc; `row_offset` is subtracted from the axis'
// first rows (Pillow shifts bounds_vert by ybox_first after cropping the
// horizontal pass to the rows the vertical one needs). Integer sums are
// order-independent, so accumulating a whole row per tap (vectorisable) gives
// Pillow's result exactly.
// Built for AVX2 as well as the baseline (picked at load time): the int32
// multiply-add of a whole row is where the time goes.
__attribute__((target_clones("avx2", "default"))) void ResampleVertical(const RgbImage& in, int row_offset,
                                                                         const ResampleAxis& axis,
                                                                         RgbImage* out) {
  const size_t row_len = static_cast<size_t>(in.width) * kRgbChannels;
  std::vector<int32_t> acc(row_len);
  for (int yy = 0; yy < out->height; ++yy) {
    std::fill(acc.begin(), acc.end(), kRoundingTerm);
    const int32_t* k = &axis.coeffs[static_cast<size_t>(yy) * axis.ksize];
    const int first = axis.first[yy] - row_offset;
    for (int t = 0; t < axis.count[yy]; ++t) {
      const uint8_t* s = in.row(first + t);
      const int32_t w = k[t];
      int32_t* a = acc.data();
      for (size_t i = 0; i < row_len; ++i) a[i] += s[i] * w;
    }
    uint8_t* dst = out->row(yy);
    for (size_t i = 0; i < row_len; ++i) dst[i] = Clip8(acc[i]);
  }
}

// ImagingResampleHorizontal_8bpc over rows [row_begin, row_begin + rows) of
// `in`, 3 interleaved channels. Taps beyond count[] have zero coefficients,
// so a fixed tap count K (compile-time, unrolled) gives the same sums; the
// source row is copied into a zero-padded buffer so those taps stay in bounds.
template <int K>
void HorizontalRow(const uint8_t* src, const ResampleAxis& axis, uint8_t* dst) {
  for (int xx = 0; xx < axis.out_size; ++xx) {
    const int32_t* k = &axis.coeffs[static_cast<size_t>(xx) * axis.ksize];
    const uint8_t* s = src + static_cast<size_t>(axis.first[xx]) * kRgbChannels;
    int32_t acc0 = kRoundingTerm, acc1 = kRoundingTerm, acc2 = kRoundingTerm;
    for (int t = 0; t < K; ++t) {
      acc0 += s[3 * t + 0] * k[t];
      acc1 += s[3 * t + 1] * k[t];
      acc2 += s[3 * t + 2] * k[t];
    }
    dst[3 * xx + 0] = Clip8(acc0);
    dst[3 * xx + 1] = Clip8(acc1);
    dst[3 * xx + 2] = Clip8(acc2);
  }
}

void HorizontalRowAnyK(const uint8_t* src, const ResampleAxis& axis, uint8_t* dst) {
  for (int xx = 0; xx < axis.out_size; ++xx) {
    const int32_t* k = &axis.coeffs[static_cast<size_t>(xx) * axis.ksize];
    const uint8_t* s = src + static_cast<size_t>(axis.first[xx]) * kRgbChannels;
    int32_t acc0 = kRoundingTerm, acc1 = kRoundingTerm, acc2 = kRoundingTerm;
    for (int t = 0; t < axis.count[xx]; ++t) {
      acc0 += s[3 * t + 0] * k[t];
      acc1 += s[3 * t + 1] * k[t];
      acc2 += s[3 * t + 2] * k[t];
    }
    dst[3 * xx + 0] = Clip8(acc0);
    dst[3 * xx + 1] = Clip8(acc1);
    dst[3 * xx + 2] = Clip8(acc2);
  }
}

RgbImage ResampleHorizontal(const RgbImage& in, int row_begin, int rows, const ResampleAxis& axis) {
  RgbImage out;
  out.width = axis.out_size;
  out.height = rows;
  out.data.resize(static_cast<size_t>(out.width) * rows * kRgbChannels);
  const size_t row_bytes = static_cast<size_t>(in.width) * kRgbChannels;
  std::vector<uint8_t> padded(row_bytes + static_cast<size_t>(axis.ksize) * kRgbChannels, 0);
  for (int y = 0; y < rows; ++y) {
    std::memcpy(padded.data(), in.row(row_begin + y), row_bytes);
    uint8_t* dst = out.row(y);
    switch (axis.ksize) {
      case 5: HorizontalRow<5>(padded.data(), axis, dst); break;
      case 7: HorizontalRow<7>(padded.data(), axis, dst); break;
      case 9: HorizontalRow<9>(padded.data(), axis, dst); break;
      case 11: HorizontalRow<11>(padded.data(), axis, dst); break;
      default: HorizontalRowAnyK(padded.data(), axis, dst); break;
    }
  }
  return out;
}

}  // namespace

ResampleAxis ComputeBicubicAxis(int in_size, int out_size) {
  ResampleAxis axis;
  axis.in_size = in_size;
  axis.out_size = out_size;
  // As precompute_coeffs with box (in0, in1) = (0.0f, float(in_size)).
  const float in0 = 0.0f;
  const float in1 = static_cast<float>(in_size);
  const double scale = static_cast<double>(in1 - in0) / out_size;
  const double filterscale = scale < 1.0 ? 1.0 : scale;
  // Downscaling widens the support by the scale factor (antialiasing).
  const double support = kBicubicSupport * filterscale;
  axis.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  axis.first.resize(out_size);
  axis.count.resize(out_size);
  axis.coeffs.assign(static_cast<size_t>(out_size) * axis.ksize, 0);
  std::vector<double> k(axis.ksize);
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = in0 + (xx + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    // (int) truncates toward zero, as in Pillow ("Round the value").
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      const double w = BicubicFilter((x + xmin - center + 0.5) * ss);
      k[x] = w;
      ww += w;
    }
    for (int x = 0; x < xmax; ++x) {
      if (ww != 0.0) k[x] /= ww;
    }
    // As normalize_coeffs_8bpc: round half away from zero to 22-bit fixed point.
    int32_t* kk = &axis.coeffs[static_cast<size_t>(xx) * axis.ksize];
    for (int x = 0; x < xmax; ++x) {
      const double scaled = k[x] * (1 << kPrecisionBits);
      kk[x] = static_cast<int32_t>(k[x] < 0 ? -0.5 + scaled : 0.5 + scaled);
    }
    axis.first[xx] = xmin;
    axis.count[xx] = xmax;
  }
  return axis;
}

RgbImage ResizeBicubicPil(const RgbImage& image, int width, int height) {
  // As ImagingResampleInner with the default box (0, 0, W, H).
  const bool need_horizontal = width != image.width;
  const bool need_vertical = height != image.height;
  if (!need_horizontal && !need_vertical) return image;  // Image.resize returns a copy

  const ResampleAxis vert = ComputeBicubicAxis(image.height, height);
  // The source rows the vertical pass reads: the horizontal pass only
  // produces these.
  const int ybox_first = vert.first[0];
  const int ybox_last = vert.first[height - 1] + vert.count[height - 1];

  RgbImage temp;
  const RgbImage* src = &image;
  int row_offset = 0;
  if (need_horizontal) {
    const ResampleAxis horiz = ComputeBicubicAxis(image.width, width);
    // Without a vertical pass Pillow still crops to [ybox_first, ybox_last),
    // which is then the whole image (identity axis).
    const int row_begin = need_vertical ? ybox_first : 0;
    const int rows = need_vertical ? ybox_last - ybox_first : image.height;
    temp = ResampleHorizontal(image, row_begin, rows, horiz);
    if (!need_vertical) return temp;
    src = &temp;
    row_offset = ybox_first;
  }
  RgbImage out;
  out.width = width;
  out.height = height;
  out.data.resize(static_cast<size_t>(width) * height * kRgbChannels);
  ResampleVertical(*src, row_offset, vert, &out);
  return out;
}

}  // namespace internvl::preprocess
