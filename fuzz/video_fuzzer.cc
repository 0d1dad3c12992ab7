// Fuzzes the FFmpeg video path on arbitrary bytes: LoadVideoFrames (demuxer
// allow-list, truncation checks, the frame-numbering demux pass, seeking and
// decoding, RGB conversion, get_index, tiling) and VideoReader::DecodeFrames.
//
// Input: two options bytes (segments, tiles, tile side, a time bound), then
// the encoded video.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <vector>

#include "absl/strings/string_view.h"
#include "core/video/video.h"
#include "fuzz/fuzz_util.h"

extern "C" {
#include <libavutil/log.h>
}

namespace internvl::fuzz {
namespace {

constexpr int kTileSides[] = {448, 28, 14, 33};
// Bounds picked from the second options byte (seconds; the last ones are
// hostile: huge, negative, reversed).
constexpr video::TimeBound kBounds[] = {{0.0, 1.0}, {0.5, 0.6},      {-5.0, 1e9}, {1e12, 1e13},
                                        {3.0, 1.0}, {-1e300, 1e300}, {0.0, 0.0}};

video::VideoOptions Options(uint8_t a, uint8_t b) {
  video::VideoOptions o;
  o.num_segments = 1 + (a & 0x03);
  o.max_num = 1 + ((a >> 2) & 0x01);
  o.image_size = kTileSides[(a >> 3) & 0x03];
  if (b & 0x80) o.bound = kBounds[(b & 0x7F) % (sizeof(kBounds) / sizeof(kBounds[0]))];
  // The fuzzer's own caps, well below the service defaults, so that one exec
  // stays small (the defaults are exercised by video_test).
  o.limits.max_frames = 1 << 12;
  o.limits.max_frame_pixels = int64_t{1} << 20;
  o.limits.max_tiles = 16;
  o.decoder_threads = 1;
  return o;
}

}  // namespace
}  // namespace internvl::fuzz

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  av_log_set_level(AV_LOG_QUIET);  // FFmpeg's complaints about bad input are expected
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace internvl::fuzz;
  namespace video = internvl::video;
  if (size < 2 || size > kMaxInputBytes) return 0;
  const video::VideoOptions options = Options(data[0], data[1]);
  const absl::string_view bytes(reinterpret_cast<const char*>(data) + 2, size - 2);

  auto frames = video::LoadVideoFrames(bytes, options);
  if (frames.ok()) {
    size_t tiles = 0;
    for (int n : frames->num_patches_list) tiles += static_cast<size_t>(n);
    if (frames->num_patches_list.size() != static_cast<size_t>(options.num_segments) ||
        frames->frame_indices.size() != static_cast<size_t>(options.num_segments) ||
        tiles != static_cast<size_t>(frames->tiles.count) ||
        frames->tiles.data.size() != tiles * frames->tiles.tile_bytes())
      std::abort();
    for (int64_t i : frames->frame_indices)
      if (i < 0 || i >= frames->info.frame_count) std::abort();
  }
  // Random access in an order of the input's choosing (first, last, repeats).
  auto reader = video::VideoReader::OpenBytes(bytes, options);
  if (!reader.ok()) return 0;
  const int64_t n = (*reader)->info().frame_count;
  if (n <= 0) std::abort();
  std::vector<int64_t> indices = {n - 1, 0, n / 2, n - 1};
  auto decoded = (*reader)->DecodeFrames(indices);
  if (decoded.ok() && decoded->size() != indices.size()) std::abort();
  (void)(*reader)->DecodeFrames({n});  // out of range: a status
  return 0;
}
