// TileEncoder over the engine's VisionBatcher: ImageNet-normalise uint8
// tiles into float32 [N, 3, S, S], then one encoder forward shared with
// concurrent requests. The only services file that touches the vision model
// (torch stays behind core/).
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "core/engine/vision_batcher.h"
#include "core/vision/vision_model.h"
#include "services/vision_encoder/embedder.h"

namespace internvl::services {

// Checks tiles are uint8 [N, S, S, 3] with S = image_size and 1 <= N <=
// max_tiles. INVALID_ARGUMENT / RESOURCE_EXHAUSTED with the offending shape.
absl::Status ValidateTiles(const HostTensor& tiles, int image_size, int max_tiles);

// `batcher` must outlive the returned function.
TileEncoder MakeVisionEncoder(VisionBatcher* batcher);

// The model's tile side (force_image_size, else vision image_size).
int ModelImageSize(const VisionModel& model);

}  // namespace internvl::services
