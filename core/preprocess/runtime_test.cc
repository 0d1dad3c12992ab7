#include "core/preprocess/runtime.h"

#include <atomic>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#ifndef INTERNVL_NO_MEDIA
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#endif

#include "core/preprocess/resize.h"
#include "core/preprocess/tiling.h"
#include "gtest/gtest.h"

namespace internvl::preprocess {
namespace {

RgbImage Noise(int w, int h, uint32_t seed) {
  std::mt19937 rng(seed);
  RgbImage im{w, h, std::vector<uint8_t>(static_cast<size_t>(w) * h * kRgbChannels)};
  // Noise with some full-range extremes, so that clamping at 0 and 255 is hit.
  for (auto& b : im.data) b = (rng() % 4 == 0) ? ((rng() & 1) ? 255 : 0) : static_cast<uint8_t>(rng());
  return im;
}

// Restores the process-wide runtime when a test ends.
class RuntimeGuard {
 public:
  RuntimeGuard() : saved_(GetPreprocessRuntime()) {}
  ~RuntimeGuard() { SetPreprocessRuntime(saved_); }

 private:
  PreprocessRuntime saved_;
};

struct Outputs {
  std::vector<std::vector<uint8_t>> resized;
  std::vector<std::vector<uint8_t>> tiles;
  std::vector<std::vector<float>> pixels;
};

// Sizes covering up- and downscaling, tap counts beyond the unrolled ones,
// one-pixel sides, unchanged axes, and the 1920x1080 case.
Outputs RunAll() {
  const std::vector<std::pair<int, int>> images = {{1920, 1080}, {37, 53}, {1, 700}, {700, 1}, {448, 1000}, {3001, 17}};
  const std::vector<std::pair<int, int>> sizes = {{448, 448}, {37, 1001}, {1, 1}, {2000, 3}, {448, 53}};
  Outputs out;
  uint32_t seed = 1;
  for (auto [w, h] : images) {
    const RgbImage im = Noise(w, h, seed++);
    for (auto [ow, oh] : sizes) out.resized.push_back(ResizeBicubicPil(im, ow, oh).data);
    for (int max_num : {1, 12}) {
      TilingOptions options;
      options.max_num = max_num;
      auto tiles = DynamicPreprocess(im, options);
      EXPECT_TRUE(tiles.ok()) << tiles.status();
      if (!tiles.ok()) continue;
      out.tiles.push_back(tiles->data);
      if (out.pixels.empty()) {  // the normalisation once (it is a table lookup per byte)
        out.pixels.emplace_back(static_cast<size_t>(tiles->count) * kRgbChannels * tiles->size * tiles->size);
        NormalizeTiles(*tiles, out.pixels.back().data());
      }
    }
  }
  return out;
}

TEST(PreprocessRuntime, SimdAndThreadsGiveTheSameBytesAsPortableSingleThread) {
  RuntimeGuard guard;
  SetPreprocessRuntime({/*threads=*/1, /*allow_simd=*/false});
  ASSERT_STREQ(ResizeKernelName(), "portable");
  const Outputs reference = RunAll();
  for (const PreprocessRuntime& runtime : {PreprocessRuntime{1, true}, PreprocessRuntime{2, true},
                                           PreprocessRuntime{3, false}, PreprocessRuntime{4, true}}) {
    SetPreprocessRuntime(runtime);
    const Outputs got = RunAll();
    const std::string path = std::to_string(runtime.threads) + " threads, " + ResizeKernelName();
    ASSERT_EQ(got.resized.size(), reference.resized.size());
    for (size_t i = 0; i < got.resized.size(); ++i)
      EXPECT_EQ(got.resized[i], reference.resized[i]) << path << " #" << i;
    ASSERT_EQ(got.tiles.size(), reference.tiles.size());
    for (size_t i = 0; i < got.tiles.size(); ++i) EXPECT_EQ(got.tiles[i], reference.tiles[i]) << path << " #" << i;
    ASSERT_EQ(got.pixels.size(), 1u);
    // Bitwise, so that -0.0f / NaN patterns would count too.
    EXPECT_EQ(0, std::memcmp(got.pixels[0].data(), reference.pixels[0].data(), got.pixels[0].size() * sizeof(float)))
        << path;
  }
  if (!UseAvx2Kernels()) std::printf("note: this CPU has no AVX2; only the portable kernels ran\n");
}

TEST(PreprocessRuntime, ForcingPortableSwitchesTheKernels) {
  RuntimeGuard guard;
  SetPreprocessRuntime({2, false});
  EXPECT_STREQ(ResizeKernelName(), "portable");
  EXPECT_FALSE(UseAvx2Kernels());
  EXPECT_EQ(GetPreprocessRuntime().threads, 2);
  SetPreprocessRuntime({0, true});  // clamped to 1
  EXPECT_EQ(GetPreprocessRuntime().threads, 1);
}

TEST(ParallelFor, RunsEveryIndexOnceFromConcurrentCallers) {
  RuntimeGuard guard;
  SetPreprocessRuntime({3, true});
  constexpr int kCallers = 4, kItems = 1000;
  std::vector<std::vector<std::atomic<int>>> hits(kCallers);
  for (auto& h : hits) h = std::vector<std::atomic<int>>(kItems);
  std::vector<std::thread> callers;
  for (int c = 0; c < kCallers; ++c)
    callers.emplace_back([&, c] {
      for (int round = 0; round < 20; ++round) ParallelFor(kItems / 20, [&](int i) { hits[c][round * 50 + i]++; });
    });
  for (auto& t : callers) t.join();
  for (auto& h : hits)
    for (auto& v : h) EXPECT_EQ(v.load(), 1);
  ParallelFor(0, [](int) { ADD_FAILURE() << "no items: fn must not run"; });
}

TEST(ScratchBuffer, ReusesAReturnedBuffer) {
  // Larger than anything the other tests cache, so the cache's smallest
  // fitting buffer is this one.
  constexpr size_t kBytes = size_t{96} << 20;
  const uint8_t* first;
  {
    ScratchBuffer a(kBytes);
    first = a.data();
    a.data()[kBytes - 1] = 7;  // writable to the end
  }
  ScratchBuffer b(kBytes - 1000);
  EXPECT_EQ(b.data(), first);
  ScratchBuffer empty(0);
  EXPECT_EQ(empty.data(), nullptr);
}

TEST(WarmUpPreprocess, RunsAndLeavesResultsUnchanged) {
  const RgbImage im = Noise(640, 480, 9);
  auto before = DynamicPreprocess(im);
  WarmUpPreprocess();
  auto after = DynamicPreprocess(im);
  ASSERT_TRUE(before.ok() && after.ok());
  EXPECT_EQ(before->data, after->data);
}

// After the warm-up, a 1920x1080 JPEG at the default options finds its
// scratch buffers (decoded pixels, the resizes' intermediates) in the cache:
// none is mapped fresh, so the cache does not grow.
TEST(WarmUpPreprocess, LeavesScratchForAFullHdImage) {
  WarmUpPreprocess();
  const size_t warm = CachedScratchBytes();
  EXPECT_GE(warm, size_t{1920} * 1080 * kRgbChannels);
  const RgbImage im = Noise(1920, 1080, 5);
#ifdef INTERNVL_NO_MEDIA
  std::string file = "P6\n1920 1080\n255\n";  // (a PPM: the only format there)
  file.append(reinterpret_cast<const char*>(im.data.data()), im.data.size());
#else
  // A JPEG: decoded by rows beside the resizes, into one more scratch buffer.
  std::vector<uchar> jpeg;
  cv::Mat bgr;
  cv::cvtColor(cv::Mat(im.height, im.width, CV_8UC3, const_cast<uint8_t*>(im.data.data())), bgr, cv::COLOR_RGB2BGR);
  ASSERT_TRUE(cv::imencode(".jpg", bgr, jpeg));
  const std::string file(jpeg.begin(), jpeg.end());
#endif
  auto tiles = LoadImageTiles(file);
  ASSERT_TRUE(tiles.ok()) << tiles.status();
  EXPECT_EQ(tiles->count, 9);
  EXPECT_EQ(CachedScratchBytes(), warm);
}

// Kept tile buffers come back with a previous image's bytes: the tiles are
// the same as from fresh (zeroed) memory, so every byte is written.
TEST(ImageBuffers, StaleKeptBuffersGiveTheSameTiles) {
  const RgbImage im = Noise(900, 500, 11);
  TilingOptions options;
  options.image_size = 64;
  auto reference = DynamicPreprocess(im, options);
  ASSERT_TRUE(reference.ok());
  for (int i = 0; i < 4; ++i) RecycleImageBuffer(std::vector<uint8_t>(size_t{1} << 20, 0xAB));
  std::vector<uint8_t> probe = TakeImageBuffer(64);
  ASSERT_EQ(probe.size(), 64u);
  EXPECT_EQ(probe[0], 0xAB) << "not a kept buffer";
  RecycleImageBuffer(std::move(probe));
  for (int round = 0; round < 3; ++round) {
    auto again = DynamicPreprocess(im, options);
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(again->data, reference->data) << "round " << round;
    RecycleImageBuffer(std::move(again->data));
  }
  // Oversized buffers are not kept; a request larger than every kept buffer
  // gets a fresh one of its size.
  RecycleImageBuffer(std::vector<uint8_t>((size_t{64} << 20) + 1));
  std::vector<uint8_t> big = TakeImageBuffer(size_t{2} << 20);
  EXPECT_EQ(big.size(), size_t{2} << 20);
}

}  // namespace
}  // namespace internvl::preprocess
