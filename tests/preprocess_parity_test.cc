// Parity of the image preprocessing with the official InternVL code
// (load_image = dynamic_preprocess + build_transform, Pillow 9.4) over every
// case in fixtures/inputs/inputs.json, plus the video frames' single tiles.
#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/files.h"
#include "core/preprocess/image.h"
#include "core/preprocess/tiling.h"
#include "core/safetensors.h"
#include "core/testing/fixtures.h"
#include "gtest/gtest.h"
#include "tests/pixel_parity.h"
#include "nlohmann/json.hpp"

namespace internvl::preprocess {
namespace {

using ::internvl::testing::CompareU8;
using ::internvl::testing::kMaxAbsTolerance;
using ::internvl::testing::kMeanAbsTolerance;
using ::internvl::testing::LoadPng;
using ::internvl::testing::TensorOrDie;
using ::internvl::testing::U8Diff;

// pixel_values_sub16 = pixel_values[:, :, ::16, ::16].
constexpr int kSubsampleStride = 16;

TEST(PreprocessParity, EveryFixtureCaseMatchesTheOfficialPipeline) {
  INTERNVL_REQUIRE_FIXTURES(fixtures);
  const std::string dir = fixtures + "/inputs/";
  auto json_text = ReadFile(dir + "inputs.json");
  ASSERT_TRUE(json_text.ok()) << json_text.status();
  const auto inputs = nlohmann::json::parse(*json_text);
  ASSERT_FALSE(inputs["preprocess"].empty());

  int cases = 0, tiles_compared = 0, tiles_bit_exact = 0;
  double worst_max_abs = 0.0, worst_mean_abs = 0.0;
  for (const auto& c : inputs["preprocess"]) {
    const std::string name = c["image"];
    const int max_num = c["max_num"];
    SCOPED_TRACE(absl::StrCat(name, " max_num=", max_num));
    const RgbImage image = LoadPng(dir + name + ".png");
    ASSERT_EQ(image.width, c["size_wh"][0].get<int>());
    ASSERT_EQ(image.height, c["size_wh"][1].get<int>());

    TilingOptions options;
    options.max_num = max_num;
    auto tiles = DynamicPreprocess(image, options);
    ASSERT_TRUE(tiles.ok()) << tiles.status();
    EXPECT_EQ(tiles->grid.cols, c["grid_cols_rows"][0].get<int>());
    EXPECT_EQ(tiles->grid.rows, c["grid_cols_rows"][1].get<int>());
    EXPECT_EQ(tiles->count, c["n_tiles_incl_thumbnail"].get<int>());
    EXPECT_EQ(tiles->has_thumbnail, c["thumbnail_appended"].get<bool>());
    ASSERT_EQ(tiles->size, kDefaultImageSize);

    // uint8 tiles vs the reference PNGs (the bar: within one level).
    const auto& pngs = c["tile_pngs"];
    if (!pngs.empty()) {
      ASSERT_EQ(static_cast<int>(pngs.size()), tiles->count);
    }
    for (size_t k = 0; k < pngs.size(); ++k) {
      const RgbImage ref = LoadPng(dir + pngs[k].get<std::string>());
      ASSERT_EQ(ref.data.size(), tiles->tile_bytes());
      const U8Diff d = CompareU8(tiles->tile(static_cast<int>(k)), ref.data.data(), ref.data.size());
      EXPECT_LE(d.max, 1) << "tile " << k << ": " << d.differing << " values differ, max " << d.max;
      ++tiles_compared;
      if (d.differing == 0) ++tiles_bit_exact;
    }

    // float32 pixel values vs the check file.
    std::vector<float> pixels(static_cast<size_t>(tiles->count) * kRgbChannels * tiles->size * tiles->size);
    NormalizeTiles(*tiles, pixels.data());
    auto check = SafetensorsFile::Open(dir + c["check_file"].get<std::string>());
    ASSERT_TRUE(check.ok()) << check.status();
    const std::vector<float> sub16 = TensorOrDie(**check, "pixel_values_sub16");
    const std::vector<float> sums = TensorOrDie(**check, "pixel_values_tile_sum");
    const int s = tiles->size, sub = s / kSubsampleStride;
    ASSERT_EQ(sub16.size(), static_cast<size_t>(tiles->count) * kRgbChannels * sub * sub);
    ASSERT_EQ(sums.size(), static_cast<size_t>(tiles->count));
    double max_abs = 0.0, sum_abs = 0.0;
    size_t idx = 0;
    for (int n = 0; n < tiles->count; ++n)
      for (int ch = 0; ch < kRgbChannels; ++ch)
        for (int y = 0; y < s; y += kSubsampleStride)
          for (int x = 0; x < s; x += kSubsampleStride, ++idx) {
            const float ours = pixels[((static_cast<size_t>(n) * kRgbChannels + ch) * s + y) * s + x];
            const double e = std::abs(static_cast<double>(ours) - sub16[idx]);
            max_abs = std::max(max_abs, e);
            sum_abs += e;
          }
    const double mean_abs = sum_abs / static_cast<double>(sub16.size());
    EXPECT_LE(max_abs, kMaxAbsTolerance) << "max abs error " << max_abs << ", mean abs " << mean_abs;
    EXPECT_LE(mean_abs, kMeanAbsTolerance) << "max abs error " << max_abs << ", mean abs " << mean_abs;
    worst_max_abs = std::max(worst_max_abs, max_abs);
    worst_mean_abs = std::max(worst_mean_abs, mean_abs);
    // Per-tile sums (float64 in the reference) catch errors the subsample misses.
    const size_t plane = static_cast<size_t>(kRgbChannels) * s * s;
    for (int n = 0; n < tiles->count; ++n) {
      double total = 0.0;
      for (size_t i = 0; i < plane; ++i) total += pixels[n * plane + i];
      // 0.002 mean abs over a whole tile bounds the sum difference.
      EXPECT_NEAR(total, sums[n], kMeanAbsTolerance * static_cast<double>(plane)) << "tile " << n << " sum";
    }
    ++cases;
  }
  EXPECT_EQ(cases, static_cast<int>(inputs["preprocess"].size()));
  std::printf("preprocess parity: %d cases, %d/%d reference tiles bit-exact, pixel_values worst max abs %.3g, "
              "worst mean abs %.3g\n",
              cases, tiles_bit_exact, tiles_compared, worst_max_abs, worst_mean_abs);
}

TEST(PreprocessParity, FullPixelValuesOfOneTileAreBitExact) {
  INTERNVL_REQUIRE_FIXTURES(fixtures);
  const std::string dir = fixtures + "/inputs/";
  const RgbImage image = LoadPng(dir + "img_448x448.png");
  TilingOptions options;
  options.max_num = 1;
  auto tiles = DynamicPreprocess(image, options);
  ASSERT_TRUE(tiles.ok()) << tiles.status();
  std::vector<float> pixels(static_cast<size_t>(tiles->count) * kRgbChannels * tiles->size * tiles->size);
  NormalizeTiles(*tiles, pixels.data());
  auto ref_file = SafetensorsFile::Open(dir + "img_448x448_max1_pixel_values.safetensors");
  ASSERT_TRUE(ref_file.ok()) << ref_file.status();
  const auto names = (*ref_file)->Names();
  ASSERT_EQ(names.size(), 1u);
  const std::vector<float> ref = TensorOrDie(**ref_file, names[0].c_str());
  ASSERT_EQ(ref.size(), pixels.size());
  size_t differing = 0;
  double max_abs = 0.0;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (ref[i] != pixels[i]) ++differing;
    max_abs = std::max(max_abs, std::abs(static_cast<double>(ref[i]) - pixels[i]));
  }
  EXPECT_EQ(differing, 0u) << "max abs error " << max_abs;
}

TEST(PreprocessParity, VideoFrameTilesMatch) {
  INTERNVL_REQUIRE_FIXTURES(fixtures);
  const std::string dir = fixtures + "/inputs/";
  auto json_text = ReadFile(dir + "inputs.json");
  ASSERT_TRUE(json_text.ok()) << json_text.status();
  const auto video = nlohmann::json::parse(*json_text)["video"];
  const auto& indices = video["frame_indices_num_segments_8"];
  ASSERT_FALSE(indices.empty());
  TilingOptions options;
  options.max_num = 1;  // load_video: one tile per frame, no thumbnail
  int exact = 0;
  for (const auto& idx : indices) {
    char stem[64];
    std::snprintf(stem, sizeof(stem), "video_frame%04d", idx.get<int>());
    SCOPED_TRACE(stem);
    const RgbImage frame = LoadPng(dir + stem + "_decoded.png");
    ASSERT_EQ(frame.width, video["frame_size_wh"][0].get<int>());
    auto tiles = DynamicPreprocess(frame, options);
    ASSERT_TRUE(tiles.ok()) << tiles.status();
    ASSERT_EQ(tiles->count, 1);
    const RgbImage ref = LoadPng(dir + stem + "_tile.png");
    ASSERT_EQ(ref.data.size(), tiles->tile_bytes());
    const U8Diff d = CompareU8(tiles->tile(0), ref.data.data(), ref.data.size());
    EXPECT_LE(d.max, 1) << d.differing << " values differ";
    if (d.differing == 0) ++exact;
  }
  std::printf("video frame tiles: %d/%zu bit-exact\n", exact, indices.size());
}

}  // namespace
}  // namespace internvl::preprocess
