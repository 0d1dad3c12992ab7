// Preprocessing time for a 1920x1080 JPEG at max 12 tiles (InternVL's default
// load_image): decode, tile (Pillow-exact bicubic resizes written straight
// into the tiles), normalise, and the whole pipeline, plus what the FIRST call
// of a fresh process costs (measured in a child process, since anything run
// here first would warm it).
//
// Wall-clock time (the pipeline runs on several threads), the minimum of
// several runs (the machine is shared and noisy), printed beside a same-run
// reference: memcpy of the normalised output's bytes, the least any pipeline
// producing them could take. For scale: Pillow needs tens of ms for the same
// decode + dynamic_preprocess.
#include <malloc.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench_util.h"
#include "core/preprocess/image.h"
#include "core/preprocess/resize.h"
#include "core/preprocess/runtime.h"
#include "core/preprocess/tiling.h"

namespace {

using internvl::bench::MinorFaults;
using internvl::bench::NowSeconds;
using internvl::preprocess::DecodeImage;
using internvl::preprocess::DynamicPreprocess;
using internvl::preprocess::GetPreprocessRuntime;
using internvl::preprocess::kRgbChannels;
using internvl::preprocess::LoadImageTiles;
using internvl::preprocess::NormalizeTiles;
using internvl::preprocess::PreprocessRuntime;
using internvl::preprocess::RgbImage;
using internvl::preprocess::SetPreprocessRuntime;
using internvl::preprocess::Tiles;
using internvl::preprocess::TilingOptions;

constexpr int kWidth = 1920;
constexpr int kHeight = 1080;
constexpr int kJpegQuality = 90;
constexpr int kRuns = 15;

double Ms(double t0) { return (NowSeconds() - t0) * 1e3; }

// Minimum wall time of `runs` calls, in milliseconds (no separate warm-up:
// callers have run the code before).
double MinMs(const std::function<void()>& fn, int runs = kRuns) {
  double best = 1e30;
  for (int i = 0; i < runs; ++i) {
    const double t0 = NowSeconds();
    fn();
    best = std::min(best, Ms(t0));
  }
  return best;
}

// A photo-like test image: smooth gradients, a few shapes, sensor-like noise
// (pure gradients compress unrealistically well).
std::string MakeJpeg() {
  cv::Mat bgr(kHeight, kWidth, CV_8UC3);
  std::mt19937 rng(42);
  std::normal_distribution<float> noise(0.0f, 6.0f);
  for (int y = 0; y < kHeight; ++y)
    for (int x = 0; x < kWidth; ++x) {
      const float b = 40.0f + 150.0f * x / kWidth, g = 60.0f + 120.0f * y / kHeight,
                  r = 128.0f + 100.0f * std::sin(0.01f * (x + 2 * y));
      bgr.at<cv::Vec3b>(y, x) =
          cv::Vec3b(cv::saturate_cast<uchar>(b + noise(rng)), cv::saturate_cast<uchar>(g + noise(rng)),
                    cv::saturate_cast<uchar>(r + noise(rng)));
    }
  for (int i = 0; i < 20; ++i)
    cv::circle(bgr, {static_cast<int>(rng() % kWidth), static_cast<int>(rng() % kHeight)},
               20 + static_cast<int>(rng() % 150), cv::Scalar(rng() % 256, rng() % 256, rng() % 256), -1);
  std::vector<uchar> buf;
  cv::imencode(".jpg", bgr, buf, {cv::IMWRITE_JPEG_QUALITY, kJpegQuality});
  return std::string(buf.begin(), buf.end());
}

// What an image chat request does: LoadImageTiles (decode beside the
// resizes); the lone image's buffer taken over as the [N,S,S,3] uint8 tensor
// (ChatPipeline::Impl::JoinTiles); normalised into a kept float buffer
// (VisionBatcher::EncodeTiles; a loaded server made one for 13 tiles at
// construction); both buffers kept for the next request once the tiles are
// encoded. Wall time and page faults of the two steps.
struct ChatLikeCost {
  double tiles_ms = 0, normalise_ms = 0;
  long tiles_faults = 0, normalise_faults = 0;
};
ChatLikeCost ChatLikeCall(const std::string& jpeg, const TilingOptions& options) {
  ChatLikeCost cost;
  const long faults0 = MinorFaults();
  const double t0 = NowSeconds();
  auto tiles = LoadImageTiles(jpeg, options);
  if (!tiles.ok()) std::abort();
  cost.tiles_ms = Ms(t0);
  const long faults1 = MinorFaults();
  cost.tiles_faults = faults1 - faults0;
  const double t1 = NowSeconds();
  std::vector<uint8_t> u8 = std::move(tiles->data);
  std::vector<uint8_t> pixels = internvl::preprocess::TakeImageBuffer(static_cast<size_t>(tiles->count) * kRgbChannels *
                                                                      tiles->size * tiles->size * sizeof(float));
  internvl::preprocess::NormalizeTilesU8(u8.data(), tiles->count, tiles->size, reinterpret_cast<float*>(pixels.data()));
  asm volatile("" : : "r"(pixels.data()) : "memory");
  cost.normalise_ms = Ms(t1);
  cost.normalise_faults = MinorFaults() - faults1;
  internvl::preprocess::RecycleImageBuffer(std::move(pixels));  // as VisionBatcher::EncodeTiles
  internvl::preprocess::RecycleImageBuffer(std::move(u8));      // as the chat does once the tiles are encoded
  return cost;
}

// Child process: the first call of a fresh process along the chat's path, then the
// same again (second call: code and libraries warm, buffers fresh).
int ColdChild(const char* path, bool warm_up) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string jpeg = ss.str();
  TilingOptions options;
  double warm_up_ms = 0;
  if (warm_up) {
    const double t0 = NowSeconds();
    internvl::preprocess::WarmUpPreprocess();
    warm_up_ms = Ms(t0);
  }
  if (warm_up) {
    // What constructing the vision batcher adds at load: a kept float buffer
    // for 13 tiles of 448 (VisionBatcherOptions::prefault_tiles).
    internvl::preprocess::RecycleImageBuffer(
        std::vector<uint8_t>(size_t{13} * kRgbChannels * 448 * 448 * sizeof(float)));
  }
  for (const char* label : {"first call ", "second call"}) {
    const ChatLikeCost c = ChatLikeCall(jpeg, options);
    std::printf("  %s%s: tiles %6.2f ms (%ld faults)  normalise %6.2f ms (%ld faults)  total %6.2f ms", label,
                warm_up ? " after WarmUpPreprocess" : "", c.tiles_ms, c.tiles_faults, c.normalise_ms,
                c.normalise_faults, c.tiles_ms + c.normalise_ms);
    if (warm_up) std::printf("  (warm-up took %.2f ms)", warm_up_ms);
    std::printf("\n");
  }
  return 0;
}

// Runs this binary again as a fresh process to measure its first call.
void RunColdChild(const std::string& jpeg_path, bool warm_up) {
  char self[4096];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n <= 0) return;
  self[n] = 0;
  const std::string cmd = std::string("'") + self + "' " + (warm_up ? "--cold-warmed '" : "--cold '") + jpeg_path + "'";
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return;
  char line[512];
  while (std::fgets(line, sizeof(line), p) != nullptr) std::fputs(line, stdout);
  pclose(p);
}

}  // namespace

int main(int argc, char** argv) {
  // The allocator settings of every process that loads a model
  // (SetTorchThreads -> TuneAllocator in core/nn/torch_util.cc): freed
  // buffers under 32 MB are reused, not unmapped and faulted in again.
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  if (argc == 3 && std::strcmp(argv[1], "--cold") == 0) return ColdChild(argv[2], false);
  if (argc == 3 && std::strcmp(argv[1], "--cold-warmed") == 0) return ColdChild(argv[2], true);

  const std::string jpeg = MakeJpeg();
  char jpeg_path[] = "/tmp/bench_preprocess_XXXXXX";
  const int fd = mkstemp(jpeg_path);
  if (fd < 0 || write(fd, jpeg.data(), jpeg.size()) != static_cast<ssize_t>(jpeg.size())) {
    std::perror("temp file");
    return 1;
  }
  close(fd);
  TilingOptions options;  // max_num 12, 448, thumbnail: the official defaults

  auto image = DecodeImage(jpeg);
  if (!image.ok()) {
    std::fprintf(stderr, "decode failed: %s\n", image.status().ToString().c_str());
    return 1;
  }
  auto tiles = DynamicPreprocess(*image, options);
  if (!tiles.ok()) {
    std::fprintf(stderr, "tiling failed: %s\n", tiles.status().ToString().c_str());
    return 1;
  }
  const size_t out_floats = static_cast<size_t>(tiles->count) * kRgbChannels * tiles->size * tiles->size;
  std::vector<float> pixels(out_floats);

  // Same-run reference: copying the float32 output's bytes once (both
  // buffers already faulted in).
  std::vector<char> src(out_floats * sizeof(float), 1), dst(out_floats * sizeof(float), 0);
  const double memcpy_ms = MinMs([&] {
    std::memcpy(dst.data(), src.data(), src.size());
    asm volatile("" : : "r"(dst.data()) : "memory");
  });

  const PreprocessRuntime runtime = GetPreprocessRuntime();
  std::printf("bench_preprocess: %dx%d JPEG (q%d, %zu bytes), max_num %d -> grid %dx%d, %d tiles of %d\n", kWidth,
              kHeight, kJpegQuality, jpeg.size(), options.max_num, tiles->grid.cols, tiles->grid.rows, tiles->count,
              tiles->size);
  std::printf(
      "path: %d thread(s) per call (INTERNVL_PREPROCESS_THREADS), resize kernels %s "
      "(INTERNVL_PREPROCESS_SIMD=portable forces portable), %u hardware threads\n",
      runtime.threads, internvl::preprocess::ResizeKernelName(), std::thread::hardware_concurrency());
  std::printf("reference: memcpy of the %.1f MB output = %.2f ms (%.1f GB/s)\n", src.size() / 1e6, memcpy_ms,
              src.size() / 1e6 / memcpy_ms);
  auto line = [&](const char* what, double ms) {
    std::printf("  %-44s %8.2f ms  (%6.1fx memcpy)\n", what, ms, ms / memcpy_ms);
  };

  std::printf("fresh process (child; the server's first request):\n");
  RunColdChild(jpeg_path, false);
  RunColdChild(jpeg_path, true);
  std::remove(jpeg_path);

  std::printf("steady state (min of %d):\n", kRuns);
  line("decode", MinMs([&] { image = DecodeImage(jpeg); }));
  line("tile (2 resizes into the tiles)", MinMs([&] { tiles = DynamicPreprocess(*image, options); }));
  line("  resize to grid (ResizeBicubicPil)", MinMs([&] {
         auto r = internvl::preprocess::ResizeBicubicPil(*image, tiles->grid.cols * tiles->size,
                                                         tiles->grid.rows * tiles->size);
         asm volatile("" : : "r"(r.data.data()) : "memory");
       }));
  line("  resize thumbnail (ResizeBicubicPil)", MinMs([&] {
         auto r = internvl::preprocess::ResizeBicubicPil(*image, tiles->size, tiles->size);
         asm volatile("" : : "r"(r.data.data()) : "memory");
       }));
  line("normalise (float32 NCHW, buffer reused)", MinMs([&] { NormalizeTiles(*tiles, pixels.data()); }));
  const double total_ms = MinMs([&] {
    auto t = LoadImageTiles(jpeg, options);
    NormalizeTiles(*t, pixels.data());
  });
  // LoadImageTiles: for this JPEG the decode runs beside the resizes'
  // horizontal passes, so the total is less than the stages' sum.
  line("total decode+tile+normalise (LoadImageTiles)", total_ms);
  ChatLikeCall(jpeg, options);  // its buffers kept, as a loaded server's
  const long faults = MinorFaults();
  line("total, as a chat (tiles taken over, batcher's buffer)", MinMs([&] { ChatLikeCall(jpeg, options); }));
  std::printf("    (%.0f page faults per call)\n", static_cast<double>(MinorFaults() - faults) / kRuns);

  // The same pipeline on the other paths, for comparison.
  std::printf("other paths, total decode+tile+normalise:\n");
  for (const PreprocessRuntime& r :
       {PreprocessRuntime{1, true}, PreprocessRuntime{1, false}, PreprocessRuntime{runtime.threads, false}}) {
    SetPreprocessRuntime(r);
    char what[96];
    std::snprintf(what, sizeof(what), "%d thread(s), %s kernels", r.threads, internvl::preprocess::ResizeKernelName());
    line(what, MinMs([&] {
           auto t = LoadImageTiles(jpeg, options);
           NormalizeTiles(*t, pixels.data());
         }));
  }
  SetPreprocessRuntime(runtime);
  return 0;
}
