// Fuzzes image decoding and InternVL's dynamic tiling on arbitrary bytes:
// ProbeImage, DecodeImage and LoadImageTiles (decode + DynamicPreprocess),
// then the normalisation of the tiles.
//
// Input: one options byte (max_num 1..4, tile side, thumbnail), then the
// encoded image (JPEG, PNG, WebP, BMP or GIF, or anything else).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "absl/strings/string_view.h"
#include "core/preprocess/image.h"
#include "core/preprocess/tiling.h"
#include "fuzz/fuzz_util.h"

namespace internvl::fuzz {
namespace {

// The fuzzer's own pixel cap (the default is Pillow's 89M-pixel bomb limit,
// which a 64 KiB PNG can legitimately reach and would just make execs slow).
constexpr int64_t kMaxPixels = int64_t{1} << 22;
// Tile sides: the real one and small ones (fast, and odd sizes for the resize).
constexpr int kTileSides[] = {448, 28, 14, 1, 3, 31, 64, 100};
// The Pillow-exact resize costs about (source rows x target width + source
// columns x target height) x taps, which the decoded pixel count does not
// bound: a 52-byte GIF whose logical screen is 3 x 64514 (193k pixels) costs
// ~1.5 G multiply-adds (2 s natively, 10 s under ASan), as it does in Pillow.
// Such degenerate aspect ratios are not tiled here, so that execs stay far
// below -timeout; everything else about them (probe, decode) still runs.
constexpr int64_t kMaxResizeWork = int64_t{1} << 24;

int64_t ResizeWork(const internvl::preprocess::ImageHeader& h, const internvl::preprocess::TilingOptions& o) {
  namespace pp = internvl::preprocess;
  const pp::TileGrid g = pp::PlanTiles(h.width, h.height, o).grid;
  const int64_t w = h.width, ht = h.height, s = o.image_size;
  return ht * s * g.cols + w * s * g.rows + (o.use_thumbnail ? (ht + w) * s : 0);
}

}  // namespace
}  // namespace internvl::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace internvl::fuzz;
  namespace pp = internvl::preprocess;
  if (size < 1 || size > kMaxInputBytes) return 0;
  const uint8_t opts = data[0];
  const absl::string_view bytes(reinterpret_cast<const char*>(data) + 1, size - 1);

  pp::TilingOptions tiling;
  tiling.max_num = 1 + (opts & 0x03);
  tiling.min_num = (opts & 0x40) ? tiling.max_num : 1;
  tiling.image_size = kTileSides[(opts >> 2) & 0x07];
  tiling.use_thumbnail = (opts & 0x20) != 0;
  pp::DecodeLimits limits;
  limits.max_pixels = kMaxPixels;

  auto header = pp::ProbeImage(bytes);
  auto image = pp::DecodeImage(bytes, limits);
  if (image.ok()) {
    // A decoded image matches the header it was checked against.
    if (!header.ok() || image->width != header->width || image->height != header->height ||
        image->data.size() != static_cast<size_t>(image->width) * image->height * pp::kRgbChannels)
      std::abort();
  }
  if (header.ok() && ResizeWork(*header, tiling) > kMaxResizeWork) return 0;
  auto tiles = pp::LoadImageTiles(bytes, tiling, limits);
  if (tiles.ok() != image.ok()) std::abort();  // the options are valid: tiling fails only if decoding does
  if (!tiles.ok()) return 0;
  const int expected = tiles->grid.count() + (tiles->has_thumbnail ? 1 : 0);
  if (tiles->count != expected || tiles->grid.count() < tiling.min_num || tiles->grid.count() > tiling.max_num ||
      tiles->data.size() != static_cast<size_t>(tiles->count) * tiles->tile_bytes())
    std::abort();
  // LoadImageTiles streams JPEGs (the decode overlapped with the resizes):
  // the same tiles as decoding, then tiling.
  auto tiled = pp::DynamicPreprocess(*image, tiling);
  if (!tiled.ok() || tiled->count != tiles->count || tiled->data != tiles->data) std::abort();
  std::vector<float> normalized(tiles->data.size());
  pp::NormalizeTiles(*tiles, normalized.data());
  return 0;
}
