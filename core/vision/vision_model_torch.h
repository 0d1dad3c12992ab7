// at::Tensor entry points of the vision path (for in-process pipelines and
// tests). Includes ATen: keep out of service headers.
#pragma once

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "core/vision/vision_model.h"

namespace internvl {

// pixel_values [N,3,S,S] (any float dtype) -> [N, T, H] in the compute dtype.
absl::StatusOr<at::Tensor> ExtractFeature(const VisionModel& model, const at::Tensor& pixel_values);
// The InternViT output before CLS removal: [N, 1+P, C] (select_layer applied).
absl::StatusOr<at::Tensor> VisionHiddenState(const VisionModel& model, const at::Tensor& pixel_values);

// Pixel shuffle as the reference: [N, W, H, C] -> [N, W*s, H*s, C/(s*s)],
// with the final permute for ps_version "v2".
at::Tensor PixelShuffle(const at::Tensor& x, double scale_factor, bool v2);

at::Tensor HostToTensor(const HostTensor& t);  // zero-copy alias
absl::StatusOr<HostTensor> TensorToHost(const at::Tensor& t);

}  // namespace internvl
