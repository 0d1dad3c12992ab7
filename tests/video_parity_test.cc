// Parity of video loading with the official `load_video` (decord stand-in
// that decodes with the ffmpeg CLI to rgb24, get_index, dynamic_preprocess
// with max_num=1, build_transform) on fixtures/inputs/video.mp4.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/files.h"
#include "core/preprocess/image.h"
#include "core/preprocess/tiling.h"
#include "core/safetensors.h"
#include "core/testing/fixtures.h"
#include "core/video/video.h"
#include "gtest/gtest.h"
#include "tests/pixel_parity.h"
#include "nlohmann/json.hpp"

namespace internvl::video {
namespace {

using ::internvl::testing::CompareU8;
using ::internvl::testing::kMaxAbsTolerance;
using ::internvl::testing::kMeanAbsTolerance;
using ::internvl::testing::LoadPng;
using ::internvl::testing::TensorOrDie;
using ::internvl::testing::U8Diff;

using preprocess::kRgbChannels;
using preprocess::RgbImage;

// pixel_values_sub16 = pixel_values[:, :, ::16, ::16].
constexpr int kSubsampleStride = 16;

class VideoParity : public ::testing::Test {
 protected:
  // inputs.json's "video" entry (empty, with a failure recorded, if unreadable).
  static nlohmann::json VideoEntry(const std::string& dir) {
    auto json_text = ReadFile(dir + "inputs.json");
    EXPECT_TRUE(json_text.ok()) << json_text.status();
    if (!json_text.ok()) return {};
    return nlohmann::json::parse(*json_text)["video"];
  }
};

TEST_F(VideoParity, FpsFrameCountAndFrameIndicesMatch) {
  INTERNVL_REQUIRE_FIXTURES(fixtures);
  const std::string dir = fixtures + "/inputs/";
  const auto video = VideoEntry(dir);
  ASSERT_FALSE(video.empty());
  auto bytes = ReadFile(dir + video["file"].get<std::string>());
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  auto reader = VideoReader::OpenBytes(*bytes);
  ASSERT_TRUE(reader.ok()) << reader.status();
  const VideoInfo& info = (*reader)->info();
  EXPECT_EQ(info.fps, video["avg_fps"].get<double>());
  EXPECT_EQ(info.frame_count, video["n_frames"].get<int64_t>());
  // The MP4 sample count agrees with the demux pass on this file.
  EXPECT_EQ(info.container_frame_count, info.frame_count);
  EXPECT_EQ(info.width, video["frame_size_wh"][0].get<int>());
  EXPECT_EQ(info.height, video["frame_size_wh"][1].get<int>());
  for (const int segments : {8, 4}) {
    auto indices = GetFrameIndices(std::nullopt, info.fps, info.frame_count - 1, 0, segments);
    ASSERT_TRUE(indices.ok()) << indices.status();
    EXPECT_EQ(*indices, video[absl::StrCat("frame_indices_num_segments_", segments)].get<std::vector<int64_t>>())
        << "num_segments " << segments;
  }
}

// len(vr) in the reference is the number of frames the ffmpeg CLI decoded:
// every frame we count must decode, and none past the end exists.
TEST_F(VideoParity, EveryCountedFrameDecodes) {
  INTERNVL_REQUIRE_FIXTURES(fixtures);
  const std::string dir = fixtures + "/inputs/";
  const auto video = VideoEntry(dir);
  ASSERT_FALSE(video.empty());
  auto bytes = ReadFile(dir + video["file"].get<std::string>());
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  auto reader = VideoReader::OpenBytes(*bytes);
  ASSERT_TRUE(reader.ok()) << reader.status();
  const int64_t n = (*reader)->info().frame_count;
  std::vector<int64_t> all(n);
  for (int64_t i = 0; i < n; ++i) all[i] = i;
  auto frames = (*reader)->DecodeFrames(all);
  ASSERT_TRUE(frames.ok()) << frames.status();
  EXPECT_EQ(static_cast<int64_t>(frames->size()), n);
  // Seeking (fresh reader, out of order) gives the same pixels as decoding
  // straight through.
  auto seeker = VideoReader::OpenBytes(*bytes);
  ASSERT_TRUE(seeker.ok()) << seeker.status();
  const std::vector<int64_t> picks = {n - 1, 7, 69, 0, 50};
  auto picked = (*seeker)->DecodeFrames(picks);
  ASSERT_TRUE(picked.ok()) << picked.status();
  for (size_t k = 0; k < picks.size(); ++k)
    EXPECT_EQ((*picked)[k].data, (*frames)[picks[k]].data) << "frame " << picks[k];
  auto past_end = (*reader)->DecodeFrames({n});
  EXPECT_EQ(past_end.status().code(), absl::StatusCode::kInvalidArgument) << past_end.status();
}

TEST_F(VideoParity, DecodedFramesAndTilesMatchTheReference) {
  INTERNVL_REQUIRE_FIXTURES(fixtures);
  const std::string dir = fixtures + "/inputs/";
  const auto video = VideoEntry(dir);
  ASSERT_FALSE(video.empty());
  auto bytes = ReadFile(dir + video["file"].get<std::string>());
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  const auto indices = video["frame_indices_num_segments_8"].get<std::vector<int64_t>>();

  auto reader = VideoReader::OpenBytes(*bytes);
  ASSERT_TRUE(reader.ok()) << reader.status();
  auto frames = (*reader)->DecodeFrames(indices);
  ASSERT_TRUE(frames.ok()) << frames.status();
  ASSERT_EQ(frames->size(), indices.size());

  VideoOptions options;
  options.num_segments = static_cast<int>(indices.size());
  auto loaded = LoadVideoFrames(*bytes, options);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->frame_indices, indices);
  EXPECT_EQ(loaded->num_patches_list, video["num_patches_list_num_segments_8"].get<std::vector<int>>());
  ASSERT_EQ(loaded->tiles.count, static_cast<int>(indices.size()));
  ASSERT_EQ(loaded->tiles.size, kDefaultImageSize);

  int worst_frame = 0, frames_exact = 0, tiles_exact = 0, worst_tile = 0;
  for (size_t k = 0; k < indices.size(); ++k) {
    const std::string stem = absl::StrFormat("video_frame%04d", indices[k]);
    SCOPED_TRACE(stem);
    const RgbImage ref = LoadPng(dir + stem + "_decoded.png");
    const RgbImage& ours = (*frames)[k];
    ASSERT_EQ(ours.width, ref.width);
    ASSERT_EQ(ours.height, ref.height);
    const U8Diff d = CompareU8(ours.data.data(), ref.data.data(), ref.data.size());
    EXPECT_LE(d.max, 1) << d.differing << " values differ, max " << d.max;
    worst_frame = std::max(worst_frame, d.max);
    if (d.differing == 0) ++frames_exact;

    const RgbImage ref_tile = LoadPng(dir + stem + "_tile.png");
    ASSERT_EQ(ref_tile.data.size(), loaded->tiles.tile_bytes());
    const U8Diff t = CompareU8(loaded->tiles.tile(static_cast<int>(k)), ref_tile.data.data(), ref_tile.data.size());
    EXPECT_LE(t.max, 1) << "tile: " << t.differing << " values differ, max " << t.max;
    worst_tile = std::max(worst_tile, t.max);
    if (t.differing == 0) ++tiles_exact;
  }
  std::printf("video parity: decoded frames %d/%zu bit-exact (max abs %d), tiles %d/%zu bit-exact (max abs %d)\n",
              frames_exact, indices.size(), worst_frame, tiles_exact, indices.size(), worst_tile);
}

TEST_F(VideoParity, PixelValuesMatchTheCheckFiles) {
  INTERNVL_REQUIRE_FIXTURES(fixtures);
  const std::string dir = fixtures + "/inputs/";
  const auto video = VideoEntry(dir);
  ASSERT_FALSE(video.empty());
  const std::string path = dir + video["file"].get<std::string>();
  for (const int segments : {8, 4}) {
    SCOPED_TRACE(absl::StrCat("num_segments ", segments));
    VideoOptions options;
    options.num_segments = segments;
    // From a path here (the other tests read bytes): both must agree with
    // the reference.
    auto loaded = LoadVideoFramesFromFile(path, options);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    EXPECT_EQ(loaded->frame_indices,
              video[absl::StrCat("frame_indices_num_segments_", segments)].get<std::vector<int64_t>>());
    const preprocess::Tiles& tiles = loaded->tiles;
    std::vector<float> pixels(static_cast<size_t>(tiles.count) * kRgbChannels * tiles.size * tiles.size);
    preprocess::NormalizeTiles(tiles, pixels.data());

    auto check = SafetensorsFile::Open(dir + absl::StrCat("video_seg", segments, "_check.safetensors"));
    ASSERT_TRUE(check.ok()) << check.status();
    const std::vector<float> sub16 = TensorOrDie(**check, "pixel_values_sub16");
    const std::vector<float> sums = TensorOrDie(**check, "pixel_values_tile_sum");
    const int s = tiles.size, sub = s / kSubsampleStride;
    ASSERT_EQ(sub16.size(), static_cast<size_t>(tiles.count) * kRgbChannels * sub * sub);
    ASSERT_EQ(sums.size(), static_cast<size_t>(tiles.count));
    double max_abs = 0.0, sum_abs = 0.0;
    size_t idx = 0;
    for (int n = 0; n < tiles.count; ++n)
      for (int ch = 0; ch < kRgbChannels; ++ch)
        for (int y = 0; y < s; y += kSubsampleStride)
          for (int x = 0; x < s; x += kSubsampleStride, ++idx) {
            const float ours = pixels[((static_cast<size_t>(n) * kRgbChannels + ch) * s + y) * s + x];
            const double e = std::abs(static_cast<double>(ours) - sub16[idx]);
            max_abs = std::max(max_abs, e);
            sum_abs += e;
          }
    const double mean_abs = sum_abs / static_cast<double>(sub16.size());
    EXPECT_LE(max_abs, kMaxAbsTolerance) << "max abs " << max_abs << ", mean abs " << mean_abs;
    EXPECT_LE(mean_abs, kMeanAbsTolerance) << "max abs " << max_abs << ", mean abs " << mean_abs;
    const size_t plane = static_cast<size_t>(kRgbChannels) * s * s;
    double worst_sum = 0.0;
    for (int n = 0; n < tiles.count; ++n) {
      double total = 0.0;
      for (size_t i = 0; i < plane; ++i) total += pixels[n * plane + i];
      // 0.002 mean abs over a whole tile bounds the sum difference.
      EXPECT_NEAR(total, sums[n], kMeanAbsTolerance * static_cast<double>(plane)) << "tile " << n << " sum";
      worst_sum = std::max(worst_sum, std::abs(total - sums[n]));
    }
    std::printf("video seg%d pixel_values: max abs %.3g, mean abs %.3g, worst tile-sum diff %.3g\n", segments, max_abs,
                mean_abs, worst_sum);
  }
}

// Damaged copies of the fixture and non-video inputs are clear errors.
TEST_F(VideoParity, DamagedCopiesAndImagesAreRefused) {
  INTERNVL_REQUIRE_FIXTURES(fixtures);
  const std::string dir = fixtures + "/inputs/";
  const auto video = VideoEntry(dir);
  ASSERT_FALSE(video.empty());
  auto bytes = ReadFile(dir + video["file"].get<std::string>());
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  for (const double keep : {0.0, 0.001, 0.25, 0.5, 0.75, 0.999}) {
    const std::string cut = bytes->substr(0, static_cast<size_t>(bytes->size() * keep));
    EXPECT_EQ(LoadVideoFrames(cut).status().code(), absl::StatusCode::kInvalidArgument) << "cut to " << keep;
  }
  // A PNG decodes in FFmpeg (png_pipe) but is not a video.
  auto png = ReadFile(dir + "video_frame0007_decoded.png");
  ASSERT_TRUE(png.ok()) << png.status();
  const auto status = LoadVideoFrames(*png).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
}

}  // namespace
}  // namespace internvl::video
