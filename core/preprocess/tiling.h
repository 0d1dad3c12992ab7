// InternVL's dynamic tiling ("dynamic high resolution"), exactly as the
// official `dynamic_preprocess` / `find_closest_aspect_ratio` /
// `build_transform` (InternVL @2410d1d, model-card code):
//
//   candidates = {(cols, rows) : min_num <= cols * rows <= max_num}, sorted by
//                cols * rows (a stable sort of a Python set: see
//                CandidateGrids for the order of equal products);
//   grid       = the candidate whose cols / rows is closest to W / H; on an
//                exact tie a later candidate wins only if
//                W * H > 0.5 * image_size^2 * cols * rows;
//   resize the image to (image_size * cols, image_size * rows) with Pillow's
//   BICUBIC, cut cols * rows tiles row-major, and append a thumbnail (the
//   whole image resized to image_size^2) LAST when use_thumbnail and
//   cols * rows != 1.
//
// Tiles travel as uint8 HWC (4x smaller than float32, see DESIGN.md); the
// vision encoder normalises them with NormalizeTiles.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/config.h"
#include "core/preprocess/image.h"

namespace internvl::preprocess {

// A grid of tiles: `cols` across (width), `rows` down (height).
struct TileGrid {
  int cols = 1;
  int rows = 1;
  int count() const { return cols * rows; }
  bool operator==(const TileGrid& other) const { return cols == other.cols && rows == other.rows; }
};

// Bounds every tiling request is checked against (ValidateTilingOptions):
// InternVL tiles are 448 px; a tile side past this or a grid whose bytes
// exceed the cap is refused before anything is allocated.
inline constexpr int kMaxTileSize = 4096;
inline constexpr int64_t kMaxTileBytes = int64_t{1} << 31;

// MiniMonkey's multi-scale adaptive cropping (minimonkey.h): its options.
enum class MiniMonkeyOrder {
  kDemo,  // demo.py, VLMEvalKit, PaddleMIX: B grid, A grid, TB
  kEval,  // the eval wrapper (and training): A grid, B grid, TA
};
enum class ScaleBRule {
  kOfficial,   // demo.py / eval / VLMEvalKit: keep unless both cuts are A's
  kPaddleMix,  // PaddleMIX and the training dataset: keep only if neither is
};

// The demo's tile ranges (4..12 for A, 3..7 for B) and order by default.
struct MiniMonkeyOptions {
  int a_min = 4, a_max = 12;
  int b_min = 3, b_max = 7;
  MiniMonkeyOrder order = MiniMonkeyOrder::kDemo;
  ScaleBRule rule = ScaleBRule::kOfficial;
  int image_size = kDefaultImageSize;
};

// The official defaults (`dynamic_preprocess(image, min_num=1, max_num=12,
// image_size=448, use_thumbnail=True)` as load_image calls it).
struct TilingOptions {
  int min_num = 1;
  int max_num = 12;
  int image_size = kDefaultImageSize;
  bool use_thumbnail = true;
  // Set: MiniMonkey's two-scale tiling instead (minimonkey.h; its own ranges
  // and tile size replace the fields above, which ValidateTilingOptions
  // still checks).
  std::optional<MiniMonkeyOptions> minimonkey = std::nullopt;
};

// The candidate grids in the order the official code iterates them:
// `sorted(set((i, j) for n in range(min_num, max_num + 1) for i in 1..n
// for j in 1..n if min_num <= i * j <= max_num), key=lambda x: x[0] * x[1])`.
// sorted() is stable, so grids with equal products keep the Python set's
// iteration order; that order is reproduced by emulating CPython's (3.8+)
// tuple hash and set table, which matters for the tie rule.
std::vector<TileGrid> CandidateGrids(int min_num, int max_num);

// As `find_closest_aspect_ratio(aspect_ratio, target_ratios, width, height,
// image_size)`; `candidates` in CandidateGrids order. Returns (1, 1) when no
// candidate is given (the official default).
TileGrid FindClosestAspectRatio(int width, int height, const std::vector<TileGrid>& candidates, int image_size);

// Tiles of one image: `count` square tiles of side `size`, uint8 RGB HWC,
// contiguous: data is [count, size, size, 3]. The first grid.count() are the
// grid tiles in row-major order (k = row * cols + col); when has_thumbnail the
// last one is the thumbnail.
struct Tiles {
  int count = 0;
  int size = 0;
  TileGrid grid;
  bool has_thumbnail = false;
  std::vector<uint8_t> data;

  size_t tile_bytes() const { return static_cast<size_t>(size) * size * kRgbChannels; }
  const uint8_t* tile(int i) const { return data.data() + i * tile_bytes(); }
};

// Validates options: 1 <= min_num <= max_num, image_size > 0.
absl::Status ValidateTilingOptions(const TilingOptions& options);

// The grid and tile count dynamic_preprocess gives a width x height image
// (the thumbnail counted when added): what the tiling costs is known from an
// image header alone, before decoding.
struct TilePlan {
  TileGrid grid;
  bool has_thumbnail = false;
  int count = 1;
};
// With options.minimonkey: grid = scale A's (the target aspect ratio),
// has_thumbnail = false and count = N, the tiles of both scales.
TilePlan PlanTiles(int width, int height, const TilingOptions& options);

// Resizes and cuts `image` as `plan` says (its grid tiles row-major, then the
// thumbnail when plan.has_thumbnail): the tiling half of DynamicPreprocess,
// for callers that choose the grid themselves (MiniMonkey's second scale).
// INVALID_ARGUMENT for an empty image or a bad size.
absl::StatusOr<Tiles> TileWithPlan(const RgbImage& image, const TilePlan& plan, int image_size);

// As the official dynamic_preprocess (see the file comment), or MiniMonkey's
// tiling when options.minimonkey is set (MiniMonkeyPreprocess's tiles: grid
// = scale A's, no has_thumbnail, count = N). INVALID_ARGUMENT
// for an empty image or bad options. Runs on up to GetPreprocessRuntime().threads
// threads (runtime.h); the bytes do not depend on it.
absl::StatusOr<Tiles> DynamicPreprocess(const RgbImage& image, const TilingOptions& options = TilingOptions());

// DecodeImage + DynamicPreprocess: bytes in, uint8 tiles out.
absl::StatusOr<Tiles> LoadImageTiles(absl::string_view bytes, const TilingOptions& options = TilingOptions(),
                                     const DecodeLimits& limits = DecodeLimits());

// build_transform's ToTensor + Normalize(kImageNetMean, kImageNetStd) over all
// tiles: out[n, c, y, x] = (float(u8) / 255 - mean[c]) / std[c], computed in
// float32 with true division like torch (bit-identical to the official
// pixel_values). `out` holds count * 3 * size * size floats ([N, 3, S, S]).
// Runs on up to GetPreprocessRuntime().threads threads.
void NormalizeTiles(const Tiles& tiles, float* out);
// The same for raw uint8 HWC tiles (`count` tiles of side `size`), for callers
// that received tiles as bytes (e.g. over gRPC).
void NormalizeTilesU8(const uint8_t* tiles_hwc, int count, int size, float* out);

}  // namespace internvl::preprocess
