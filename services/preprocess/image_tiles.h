// Request validation and tiling of PreprocessImagesRequest, transport-free
// apart from the proto types. Shared by the preprocess service and the vision
// encoder's EncodeImages (which preprocesses in-process).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "core/preprocess/image.h"
#include "core/preprocess/tiling.h"
#include "internvl/v1/preprocess.pb.h"
#include "services/common/serving_limits.h"
#include "services/common/tensor_chunks.h"

namespace internvl::services {

// The media part of ServingLimits, as the preprocess and vision services use it.
struct ImageLimits {
  // Images per request.
  int max_images = kDefaultLimits.max_images;
  // Encoded size of one image.
  int64_t max_image_bytes = kDefaultLimits.max_image_bytes;
  // Decoded width * height of one image (checked at the header, before
  // decoding).
  int64_t max_pixels = kDefaultLimits.max_pixels;
  // Largest max_num a request may ask for.
  int max_tiles = kDefaultLimits.max_tiles;
  // max_num when the request leaves it 0 (the official load_image default).
  int default_max_num = kDefaultLimits.default_max_num;
  // Tile side (448 for every InternVL2 / 2.5 model).
  int image_size = kDefaultImageSize;
};

// TilingSettings -> TilingOptions with defaults applied. INVALID_ARGUMENT for
// negative values or min_num > max_num; RESOURCE_EXHAUSTED for max_num >
// limits.max_tiles.
absl::StatusOr<preprocess::TilingOptions> ResolveTiling(const v1::TilingSettings& settings, const ImageLimits& limits);
// MiniMonkeyTiling -> MiniMonkeyOptions (0 / empty = the demo's defaults).
// INVALID_ARGUMENT for bad ranges or names; RESOURCE_EXHAUSTED for a range
// past limits.max_tiles.
absl::StatusOr<preprocess::MiniMonkeyOptions> ResolveMiniMonkey(const v1::MiniMonkeyTiling& settings,
                                                                const ImageLimits& limits);

// The request field for `options` (what ResolveMiniMonkey reads back).
v1::MiniMonkeyTiling MiniMonkeyToProto(const preprocess::MiniMonkeyOptions& options);

// Checks the request's image count and sizes. INVALID_ARGUMENT for no images
// or an empty one; RESOURCE_EXHAUSTED for too many or too large. Messages
// name the image index and the limit.
absl::Status ValidateImages(const v1::PreprocessImagesRequest& request, const ImageLimits& limits);

// One image's tiles and their description (ImageTiles.image_index unset).
struct TiledImage {
  v1::ImageTiles info;
  HostTensor tiles;  // uint8 [N, S, S, 3]
};

// Decodes and tiles one image. Errors are prefixed with "image <index>: ".
absl::StatusOr<TiledImage> TileImage(absl::string_view bytes, int index, const preprocess::TilingOptions& options,
                                     const ImageLimits& limits);

// Sets info->media_sha256 = SHA-256(bytes) (what the vision encoder keys its
// cache on).
void SetMediaDigest(absl::string_view bytes, v1::ImageTiles* info);

}  // namespace internvl::services
