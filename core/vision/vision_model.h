// The InternVL vision path: InternViT -> drop CLS -> pixel shuffle
// (downsample_ratio, ps_version) -> mlp1 projector, i.e. the official
// InternVLChatModel.extract_feature. This header is torch-free so services can
// include it; at::Tensor entry points are in vision_model_torch.h.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "core/config.h"
#include "core/host_tensor.h"
#include "core/safetensors.h"

namespace internvl {

struct VisionOptions {
  std::string dtype = "bf16";  // "fp32" or "bf16" (bf16 uses AMX through oneDNN)
  // Tiles per forward pass. One 448px tile already gives matmuls of 1025
  // rows (near peak); more tiles per pass only grow the temporaries past
  // glibc's mmap threshold (fresh, kernel-zeroed pages every layer).
  int tile_batch = 1;
  // "cpu", "cuda" or "cuda:N" (core/nn/device.h): where the weights live and
  // the tiles are normalised and encoded.
  std::string device = "cpu";
};

class VisionModel {
 public:
  // Loads config.json and the `vision_model.*` and `mlp1.*` tensors of a model
  // folder. Missing or unexpected keys are an error listing them.
  static absl::StatusOr<std::unique_ptr<VisionModel>> Load(const std::string& model_dir, const VisionOptions& options);
  static absl::StatusOr<std::unique_ptr<VisionModel>> Load(const InternVLConfig& config, const TensorStore& store,
                                                           const VisionOptions& options);
  ~VisionModel();

  // pixel_values float32 [N, 3, S, S] (normalised), or uint8 tiles [N, S, S,
  // 3] (normalised on the model's device, bit-identical to
  // preprocess::NormalizeTilesU8) -> embeddings [N, T, H] in the compute
  // dtype (T = num_image_token, H = the LLM hidden size), on the host.
  absl::StatusOr<HostTensor> ExtractFeature(const HostTensor& pixel_values) const;
  // Whether uint8 tiles should reach ExtractFeature as they are: true off
  // the CPU (4x fewer bytes to copy over; the device normalises), false on
  // the CPU, where the host's normalisation is the fastest.
  bool normalizes_on_device() const;
  // "cpu", "cuda:0", ...
  std::string device_name() const;

  const InternVLConfig& config() const;
  int num_image_token() const { return config().num_image_token(); }
  int output_hidden_size() const { return config().llm.hidden_size; }
  DType compute_dtype() const;
  // Identifies the vision weights (for embedding cache keys).
  const std::string& fingerprint() const;

  struct Impl;
  Impl& impl() const { return *impl_; }

 private:
  explicit VisionModel(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace internvl
