// at::Tensor entry points of the vision path (for in-process pipelines and
// tests). Includes ATen: keep out of service headers.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "core/vision/vision_model.h"

namespace internvl {

// pixel_values [N,3,S,S] (any float dtype, any device) -> [N, T, H] in the
// compute dtype, on the model's device.
absl::StatusOr<at::Tensor> ExtractFeature(const VisionModel& model, const at::Tensor& pixel_values);
// The InternViT output before CLS removal: [N, 1+P, C] (select_layer applied).
absl::StatusOr<at::Tensor> VisionHiddenState(const VisionModel& model, const at::Tensor& pixel_values);

// Pixel shuffle as the reference: [N, W, H, C] -> [N, W*s, H*s, C/(s*s)],
// with the final permute for ps_version "v2".
at::Tensor PixelShuffle(const at::Tensor& x, double scale_factor, bool v2);

// The training view of the vision path (the trainer's forward):
// extract_feature with the InternViT run frozen (InferenceMode, no graph)
// unless `backbone_grad`, and pixel shuffle + mlp1 under the caller's grad
// mode, so gradients reach the projector. [N,3,S,S] -> [N, T, H].
absl::StatusOr<at::Tensor> ExtractFeatureForTraining(const VisionModel& model, const at::Tensor& pixel_values,
                                                     bool backbone_grad);
// The live parameters under their checkpoint names ("vision_model.*",
// "mlp1.*"), for freezing, optimizers and checkpoint writing.
std::vector<std::pair<std::string, at::Tensor>> NamedVisionParameters(const VisionModel& model);
// Puts the modules in train (true) or eval mode (no dropout here either way:
// InternViT's dropouts are 0; drop_path is not implemented, as 0 in inference).
void SetVisionTraining(const VisionModel& model, bool train);

// uint8 tiles [N, S, S, 3] -> normalised float32 [N, 3, S, S] on `device`:
// ToTensor + Normalize as libtorch ops, each rounded to fp32 as
// preprocess::NormalizeTilesU8's table is (bit-identical results).
at::Tensor NormalizeTiles(const at::Tensor& tiles_u8, const c10::Device& device);

at::Tensor HostToTensor(const HostTensor& t);  // zero-copy alias
absl::StatusOr<HostTensor> TensorToHost(const at::Tensor& t);

}  // namespace internvl
