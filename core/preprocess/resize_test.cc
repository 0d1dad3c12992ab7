#include "core/preprocess/resize.h"

#include <vector>

#include "gtest/gtest.h"

namespace internvl::preprocess {
namespace {

RgbImage Filled(int w, int h, uint8_t r, uint8_t g, uint8_t b) {
  RgbImage im{w, h, {}};
  for (int i = 0; i < w * h; ++i) im.data.insert(im.data.end(), {r, g, b});
  return im;
}

TEST(ResizeBicubicPil, SameSizeIsACopy) {
  RgbImage im = Filled(5, 4, 1, 2, 3);
  im.data[7] = 200;
  const RgbImage out = ResizeBicubicPil(im, 5, 4);
  EXPECT_EQ(out.data, im.data);
}

TEST(ResizeBicubicPil, ConstantImageStaysConstantUpAndDown) {
  // Coefficients are normalised per output pixel, so a flat image stays flat
  // (fixed-point rounding included).
  const RgbImage im = Filled(37, 53, 10, 128, 250);
  for (auto [w, h] : {std::pair{448, 448}, std::pair{7, 5}, std::pair{37, 100}, std::pair{100, 53}}) {
    const RgbImage out = ResizeBicubicPil(im, w, h);
    ASSERT_EQ(out.width, w);
    ASSERT_EQ(out.height, h);
    for (size_t i = 0; i < out.data.size(); i += 3) {
      ASSERT_EQ(out.data[i], 10) << w << "x" << h;
      ASSERT_EQ(out.data[i + 1], 128);
      ASSERT_EQ(out.data[i + 2], 250);
    }
  }
}

TEST(ResizeBicubicPil, HalvingTwoPixelsAveragesWithRoundHalfUp) {
  // 2 -> 1: both taps weigh exactly 0.5 (2^21 in fixed point); the 2^21
  // rounding term makes (0 + 255) / 2 = 127.5 round to 128, as Pillow does.
  RgbImage im{2, 1, {0, 10, 255, 255, 11, 0}};
  const RgbImage out = ResizeBicubicPil(im, 1, 1);
  EXPECT_EQ(out.data, (std::vector<uint8_t>{128, 11, 128}));
}

TEST(ResizeBicubicPil, OvershootIsClampedNotWrapped) {
  // Upscaling a hard edge rings (a = -0.5 has negative lobes): values must
  // clamp to 0 / 255 like Pillow's clip8, not wrap around.
  RgbImage im{4, 1, {0, 0, 0, 0, 0, 0, 255, 255, 255, 255, 255, 255}};
  const RgbImage out = ResizeBicubicPil(im, 16, 1);
  EXPECT_EQ(out.data.front(), 0);
  EXPECT_EQ(out.data.back(), 255);
  for (size_t i = 3; i < out.data.size(); i += 3) EXPECT_GE(out.data[i], out.data[i - 3]) << i;
}

TEST(ComputeBicubicAxis, DownscalingWidensTheSupportByTheScale) {
  const ResampleAxis up = ComputeBicubicAxis(100, 400);
  EXPECT_EQ(up.ksize, 2 * 2 + 1);  // support 2
  const ResampleAxis down = ComputeBicubicAxis(400, 100);
  EXPECT_EQ(down.ksize, 8 * 2 + 1);  // support 2 * scale 4
  for (int i = 0; i < down.out_size; ++i) {
    int64_t sum = 0;
    for (int t = 0; t < down.count[i]; ++t) sum += down.coeffs[i * down.ksize + t];
    // Normalised to 1.0 in 22-bit fixed point, up to per-tap rounding.
    EXPECT_NEAR(sum, 1 << 22, down.count[i]) << i;
    EXPECT_GE(down.first[i], 0);
    EXPECT_LE(down.first[i] + down.count[i], 400);
  }
}

}  // namespace
}  // namespace internvl::preprocess
