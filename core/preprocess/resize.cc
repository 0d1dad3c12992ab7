#include "core/preprocess/resize.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/preprocess/resize_kernels.h"
#include "core/preprocess/runtime.h"

namespace internvl::preprocess {
namespace internal {
namespace {

// ImagingResampleHorizontal_8bpc for one row, 3 interleaved channels. Taps
// beyond count[] have zero coefficients, so a fixed tap count K (compile-time,
// unrolled) gives the same sums; the source row is zero-padded so those taps
// stay in bounds.
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

}  // namespace

void HorizontalRowPortable(const uint8_t* src, const ResampleAxis& axis, uint8_t* dst) {
  switch (axis.ksize) {
    case 5:
      HorizontalRow<5>(src, axis, dst);
      break;
    case 7:
      HorizontalRow<7>(src, axis, dst);
      break;
    case 9:
      HorizontalRow<9>(src, axis, dst);
      break;
    case 11:
      HorizontalRow<11>(src, axis, dst);
      break;
    default:
      HorizontalRowAnyK(src, axis, dst);
      break;
  }
}

// ImagingResampleVertical_8bpc over a span of one output row. Integer sums
// are order-independent, so accumulating a block of columns per tap
// (vectorisable) gives Pillow's result exactly. Built for AVX2 as well as the
// baseline (picked at load time): the int32 multiply-add is where time goes.
__attribute__((target_clones("avx2", "default"))) void VerticalSpanPortable(const uint8_t* src, size_t src_stride,
                                                                            int count, const int32_t* k, size_t len,
                                                                            uint8_t* dst) {
  constexpr size_t kBlock = 512;
  int32_t acc[kBlock];
  for (size_t i0 = 0; i0 < len; i0 += kBlock) {
    const size_t n = std::min(kBlock, len - i0);
    std::fill(acc, acc + n, kRoundingTerm);
    for (int t = 0; t < count; ++t) {
      const uint8_t* s = src + t * src_stride + i0;
      const int32_t w = k[t];
      for (size_t i = 0; i < n; ++i) acc[i] += s[i] * w;
    }
    for (size_t i = 0; i < n; ++i) dst[i0 + i] = Clip8(acc[i]);
  }
}

std::vector<int16_t> PackAvx2HorizontalTaps(const ResampleAxis& axis) {
  const int groups = Avx2Groups(axis);
  std::vector<int16_t> packed(static_cast<size_t>(axis.out_size) * groups * kAvx2GroupInt16s, 0);
  constexpr int kLaneInt16s = 8;  // one 128-bit lane: [k0 k1 k0 k1 k0 k1 0 0]
  for (int xx = 0; xx < axis.out_size; ++xx) {
    const int32_t* k = &axis.coeffs[static_cast<size_t>(xx) * axis.ksize];
    for (int t = 0; t < axis.ksize; ++t) {
      // k = hi * 2^16 + lo with lo in int16 range (the low 16 bits, signed).
      const int16_t lo = static_cast<int16_t>(static_cast<uint16_t>(k[t] & 0xFFFF));
      const int16_t hi = static_cast<int16_t>((k[t] - lo) >> 16);
      const int g = t / kAvx2TapsPerGroup, r = t % kAvx2TapsPerGroup;
      int16_t* group = &packed[(static_cast<size_t>(xx) * groups + g) * kAvx2GroupInt16s];
      const int lane = r / 2, pair = r % 2;
      for (int c = 0; c < kRgbChannels; ++c) {
        group[lane * kLaneInt16s + 2 * c + pair] = lo;
        group[2 * kLaneInt16s + lane * kLaneInt16s + 2 * c + pair] = hi;
      }
    }
  }
  return packed;
}

}  // namespace internal

namespace {
using internal::kPrecisionBits;
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

PilBicubicResize::PilBicubicResize(int in_width, int in_height, int out_width, int out_height)
    : in_width_(in_width),
      out_width_(out_width),
      out_height_(out_height),
      need_horizontal_(out_width != in_width),
      need_vertical_(out_height != in_height) {
  // As ImagingResampleInner with the default box (0, 0, W, H).
  if (need_vertical_) {
    vert_ = ComputeBicubicAxis(in_height, out_height);
    // The source rows the vertical pass reads: the horizontal pass only
    // produces these (Pillow shifts the vertical bounds by ybox_first).
    row_offset_ = vert_.first[0];
    intermediate_rows_ = vert_.first[out_height - 1] + vert_.count[out_height - 1] - row_offset_;
  } else {
    intermediate_rows_ = in_height;
  }
  avx2_ = UseAvx2Kernels();
  if (need_horizontal_) {
    horiz_ = ComputeBicubicAxis(in_width, out_width);
    if (avx2_) avx2_taps_ = internal::PackAvx2HorizontalTaps(horiz_);
  }
}

void PilBicubicResize::Horizontal(const uint8_t* in, int begin, int end, uint8_t* intermediate) const {
  const size_t in_row_bytes = static_cast<size_t>(in_width_) * kRgbChannels;
  const size_t out_row_bytes = static_cast<size_t>(out_width_) * kRgbChannels;
  std::vector<uint8_t> padded(in_row_bytes + internal::HorizontalRowPadding(horiz_), 0);
  for (int r = begin; r < end; ++r) {
    std::memcpy(padded.data(), in + static_cast<size_t>(row_offset_ + r) * in_row_bytes, in_row_bytes);
    uint8_t* dst = intermediate + r * out_row_bytes;
    if (avx2_) {
#if defined(INTERNVL_PREPROCESS_HAVE_AVX2)
      internal::HorizontalRowAvx2(padded.data(), horiz_, avx2_taps_.data(), dst);
#endif
    } else {
      internal::HorizontalRowPortable(padded.data(), horiz_, dst);
    }
  }
}

void PilBicubicResize::Vertical(const uint8_t* in, const uint8_t* intermediate, int x0, int x1, int y0, int y1,
                                uint8_t* dst, size_t dst_stride) const {
  // Without a horizontal pass the vertical one reads the input itself.
  const uint8_t* src =
      need_horizontal_ ? intermediate : in + static_cast<size_t>(row_offset_) * in_width_ * kRgbChannels;
  const size_t src_stride = static_cast<size_t>(out_width_) * kRgbChannels;
  const size_t col = static_cast<size_t>(x0) * kRgbChannels;
  const size_t len = static_cast<size_t>(x1 - x0) * kRgbChannels;
  for (int y = y0; y < y1; ++y, dst += dst_stride) {
    if (!need_vertical_) {
      std::memcpy(dst, src + y * src_stride + col, len);
      continue;
    }
    const uint8_t* rows = src + (vert_.first[y] - row_offset_) * src_stride + col;
    const int32_t* k = &vert_.coeffs[static_cast<size_t>(y) * vert_.ksize];
#if defined(INTERNVL_PREPROCESS_HAVE_AVX2)
    if (avx2_) {
      internal::VerticalSpanAvx2(rows, src_stride, vert_.count[y], k, len, dst);
      continue;
    }
#endif
    internal::VerticalSpanPortable(rows, src_stride, vert_.count[y], k, len, dst);
  }
}

RgbImage ResizeBicubicPil(const RgbImage& image, int width, int height) {
  if (width == image.width && height == image.height) return image;  // Image.resize returns a copy
  const PilBicubicResize resize(image.width, image.height, width, height);
  const ScratchBuffer intermediate(resize.intermediate_bytes());
  RgbImage out;
  out.width = width;
  out.height = height;
  out.data.resize(static_cast<size_t>(width) * height * kRgbChannels);
  // Row blocks: big enough to amortise a task, small enough to balance.
  constexpr int kRowsPerTask = 32;
  const int h_rows = resize.intermediate_rows();
  ParallelFor((h_rows + kRowsPerTask - 1) / kRowsPerTask, [&](int i) {
    resize.Horizontal(image.data.data(), i * kRowsPerTask, std::min(h_rows, (i + 1) * kRowsPerTask), intermediate.data());
  });
  const size_t stride = static_cast<size_t>(width) * kRgbChannels;
  ParallelFor((height + kRowsPerTask - 1) / kRowsPerTask, [&](int i) {
    const int y0 = i * kRowsPerTask;
    resize.Vertical(image.data.data(), intermediate.data(), 0, width, y0, std::min(height, y0 + kRowsPerTask),
                    out.data.data() + y0 * stride, stride);
  });
  return out;
}

}  // namespace internvl::preprocess
