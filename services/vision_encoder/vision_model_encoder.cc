#include "services/vision_encoder/vision_model_encoder.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/preprocess/image.h"
#include "core/preprocess/tiling.h"

namespace internvl::services {

absl::Status ValidateTiles(const HostTensor& tiles, int image_size, int max_tiles) {
  const auto& s = tiles.shape;
  if (tiles.dtype != DType::kU8 || s.size() != 4 || s[1] != image_size || s[2] != image_size ||
      s[3] != preprocess::kRgbChannels || s[0] < 1) {
    return absl::InvalidArgumentError(absl::StrCat("tiles must be uint8 [N, ", image_size, ", ", image_size, ", ",
                                                   preprocess::kRgbChannels, "] with N >= 1, got ",
                                                   DTypeName(tiles.dtype), " [", absl::StrJoin(s, ", "), "]"));
  }
  if (s[0] > max_tiles) {
    return absl::ResourceExhaustedError(
        absl::StrCat(s[0], " tiles in one request; this server encodes at most ", max_tiles));
  }
  return absl::OkStatus();
}

int ModelImageSize(const VisionModel& model) { return model.config().image_size(); }

TileEncoder MakeVisionEncoder(VisionBatcher* batcher) {
  return [batcher](const HostTensor& tiles) { return batcher->EncodeTiles(tiles); };
}

}  // namespace internvl::services
