#include "core/preprocess/tiling.h"

#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/config.h"
#include "core/preprocess/resize.h"
#include "gtest/gtest.h"

namespace internvl::preprocess {
namespace {

std::string Join(const std::vector<TileGrid>& grids) {
  std::vector<std::string> parts;
  for (const auto& g : grids) parts.push_back(absl::StrCat(g.cols, "x", g.rows));
  return absl::StrJoin(parts, " ");
}

RgbImage Gradient(int w, int h) {
  RgbImage im{w, h, std::vector<uint8_t>(static_cast<size_t>(w) * h * kRgbChannels)};
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      uint8_t* p = im.row(y) + 3 * x;
      p[0] = static_cast<uint8_t>(x * 255 / std::max(1, w - 1));
      p[1] = static_cast<uint8_t>(y * 255 / std::max(1, h - 1));
      p[2] = static_cast<uint8_t>((x + y) & 0xFF);
    }
  return im;
}

TileGrid Grid(int w, int h, int min_num, int max_num) {
  return FindClosestAspectRatio(w, h, CandidateGrids(min_num, max_num), kDefaultImageSize);
}

// Golden orders printed by CPython 3.11 for
// sorted(set(...), key=lambda x: x[0] * x[1]) (same tuple hash since 3.8).
TEST(CandidateGrids, MatchPythonSetThenStableSortOrder) {
  EXPECT_EQ(Join(CandidateGrids(1, 12)),
            "1x1 1x2 2x1 3x1 1x3 2x2 4x1 1x4 5x1 1x5 1x6 6x1 3x2 2x3 7x1 1x7 4x2 2x4 1x8 8x1 1x9 3x3 9x1 "
            "2x5 5x2 10x1 1x10 11x1 1x11 12x1 3x4 4x3 1x12 6x2 2x6");
  EXPECT_EQ(Join(CandidateGrids(1, 6)), "1x1 1x2 2x1 3x1 1x3 4x1 1x4 2x2 1x5 5x1 6x1 2x3 1x6 3x2");
  EXPECT_EQ(Join(CandidateGrids(3, 7)), "3x1 1x3 4x1 1x4 2x2 1x5 5x1 6x1 2x3 1x6 3x2 7x1 1x7");
  EXPECT_EQ(Join(CandidateGrids(6, 6)), "2x3 1x6 3x2 6x1");
  EXPECT_EQ(Join(CandidateGrids(1, 1)), "1x1");
}

TEST(CandidateGrids, LargeRangesKeepPythonOrderAcrossTableResizes) {
  // 1..24 forces several set table resizes (8 -> 32 -> 128 -> 512 slots).
  EXPECT_EQ(Join(CandidateGrids(1, 24)),
            "1x1 1x2 2x1 3x1 1x3 2x2 4x1 1x4 5x1 1x5 6x1 3x2 2x3 1x6 7x1 1x7 4x2 2x4 1x8 8x1 "
            "9x1 3x3 1x9 1x10 5x2 10x1 2x5 1x11 11x1 6x2 1x12 2x6 12x1 3x4 4x3 13x1 1x13 14x1 1x14 7x2 "
            "2x7 1x15 5x3 3x5 15x1 8x2 16x1 4x4 1x16 2x8 1x17 17x1 18x1 3x6 9x2 1x18 6x3 2x9 1x19 19x1 "
            "20x1 5x4 2x10 1x20 4x5 10x2 7x3 1x21 3x7 21x1 2x11 11x2 22x1 1x22 1x23 23x1 1x24 24x1 6x4 3x8 "
            "4x6 2x12 8x3 12x2");
}

TEST(FindClosestAspectRatio, PicksTheClosestRatio) {
  EXPECT_EQ(Grid(800, 600, 1, 12), (TileGrid{4, 3}));
  EXPECT_EQ(Grid(800, 600, 1, 6), (TileGrid{3, 2}));
  EXPECT_EQ(Grid(300, 1200, 1, 12), (TileGrid{1, 4}));
  EXPECT_EQ(Grid(1920, 200, 1, 12), (TileGrid{10, 1}));
  EXPECT_EQ(Grid(800, 600, 1, 1), (TileGrid{1, 1}));
}

TEST(FindClosestAspectRatio, ExactTiePrefersLargerGridOnlyForLargeImages) {
  // Square images tie between 1x1, 2x2, 3x3; a larger grid wins only if
  // W * H > 0.5 * 448^2 * cols * rows.
  EXPECT_EQ(Grid(100, 100, 1, 12), (TileGrid{1, 1}));
  EXPECT_EQ(Grid(700, 700, 1, 12), (TileGrid{2, 2}));    // 490000 > 401408, < 903168
  EXPECT_EQ(Grid(1000, 1000, 1, 12), (TileGrid{3, 3}));  // > 903168
  // 2:1 ties 2x1 and 4x2.
  EXPECT_EQ(Grid(896, 448, 1, 12), (TileGrid{2, 1}));
  EXPECT_EQ(Grid(1920, 960, 1, 12), (TileGrid{4, 2}));
}

TEST(FindClosestAspectRatio, EqualProductTieFollowsPythonSetOrder) {
  // W/H = 1.25 is equally far from 1x2 (0.5) and 2x1 (2). The set yields 1x2
  // first, so 2x1 wins only through the area rule.
  EXPECT_EQ(Grid(50, 40, 2, 2), (TileGrid{1, 2}));
  EXPECT_EQ(Grid(1000, 800, 2, 2), (TileGrid{2, 1}));
}

TEST(DynamicTiling, WideImageUsesMaxTilesPlusThumbnail) {
  auto tiles = DynamicPreprocess(Gradient(1920, 200));
  ASSERT_TRUE(tiles.ok()) << tiles.status();
  EXPECT_EQ(tiles->grid, (TileGrid{10, 1}));
  EXPECT_TRUE(tiles->has_thumbnail);
  EXPECT_EQ(tiles->count, 11);
  EXPECT_EQ(tiles->size, kDefaultImageSize);
  EXPECT_EQ(tiles->data.size(), 11 * tiles->tile_bytes());
}

TEST(DynamicTiling, TilesAreRowMajorCropsOfTheResizedImageAndThumbnailIsLast) {
  const RgbImage image = Gradient(800, 600);
  TilingOptions options;
  options.image_size = 32;  // small tiles keep the test fast
  options.max_num = 6;
  auto tiles = DynamicPreprocess(image, options);
  ASSERT_TRUE(tiles.ok()) << tiles.status();
  ASSERT_EQ(tiles->grid, (TileGrid{3, 2}));
  ASSERT_EQ(tiles->count, 7);
  const RgbImage resized = ResizeBicubicPil(image, 3 * 32, 2 * 32);
  for (int k = 0; k < 6; ++k) {
    const int x0 = (k % 3) * 32, y0 = (k / 3) * 32;
    for (int y = 0; y < 32; ++y)
      ASSERT_EQ(0, std::memcmp(tiles->tile(k) + y * 32 * 3, resized.row(y0 + y) + x0 * 3, 32 * 3))
          << "tile " << k << " row " << y;
  }
  const RgbImage thumb = ResizeBicubicPil(image, 32, 32);
  EXPECT_EQ(0, std::memcmp(tiles->tile(6), thumb.data.data(), thumb.data.size()));
}

TEST(DynamicTiling, SingleTileHasNoThumbnail) {
  TilingOptions options;
  options.max_num = 1;
  auto tiles = DynamicPreprocess(Gradient(800, 600), options);
  ASSERT_TRUE(tiles.ok());
  EXPECT_EQ(tiles->count, 1);
  EXPECT_FALSE(tiles->has_thumbnail);
}

TEST(DynamicTiling, NoThumbnailWhenDisabled) {
  TilingOptions options;
  options.use_thumbnail = false;
  auto tiles = DynamicPreprocess(Gradient(800, 600), options);
  ASSERT_TRUE(tiles.ok());
  EXPECT_EQ(tiles->count, 12);
  EXPECT_FALSE(tiles->has_thumbnail);
}

TEST(DynamicTiling, RejectsBadOptionsAndEmptyImages) {
  TilingOptions bad;
  bad.min_num = 3;
  bad.max_num = 2;
  EXPECT_EQ(DynamicPreprocess(Gradient(8, 8), bad).status().code(), absl::StatusCode::kInvalidArgument);
  bad = TilingOptions();
  bad.min_num = 0;
  EXPECT_EQ(DynamicPreprocess(Gradient(8, 8), bad).status().code(), absl::StatusCode::kInvalidArgument);
  bad = TilingOptions();
  bad.image_size = 0;
  EXPECT_EQ(DynamicPreprocess(Gradient(8, 8), bad).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DynamicPreprocess(RgbImage{}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(NormalizeTiles, MatchesTorchvisionFormulaInFloat32) {
  Tiles tiles;
  tiles.count = 1;
  tiles.size = 2;
  tiles.data = {0, 128, 255, 1, 2, 3, 254, 100, 7, 9, 10, 11};
  std::vector<float> out(12);
  NormalizeTiles(tiles, out.data());
  for (int c = 0; c < 3; ++c)
    for (int i = 0; i < 4; ++i) {
      const float x = static_cast<float>(tiles.data[3 * i + c]) / 255.0f;
      EXPECT_EQ(out[c * 4 + i], (x - kImageNetMean[c]) / kImageNetStd[c]) << "c " << c << " i " << i;
    }
  // Planar CHW layout: the red plane comes first.
  EXPECT_FLOAT_EQ(out[0], (0.0f - kImageNetMean[0]) / kImageNetStd[0]);
  EXPECT_FLOAT_EQ(out[4], (128.0f / 255.0f - kImageNetMean[1]) / kImageNetStd[1]);
}

}  // namespace
}  // namespace internvl::preprocess
