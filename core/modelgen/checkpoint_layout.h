// The tensors of an InternVL checkpoint in the original HF layout, derived
// from its config.json alone: names exactly as InternVLChatModel's state_dict
// (vision_model.*, mlp1.*, language_model.*), shapes, and how make-model
// initialises each one.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/config.h"

namespace internvl::modelgen {

// How a random checkpoint fills a tensor.
enum class Init {
  kNormal,      // N(0, kInitStd): linear/conv weights, embeddings
  kOnes,        // norm weights (LayerNorm / RMSNorm gamma)
  kZeros,       // biases
  kLayerScale,  // InternViT ls1/ls2
};

// The reference's initializer_range (InternVisionConfig, Qwen2Config,
// InternLM2Config, LlamaConfig all default to 0.02).
inline constexpr double kInitStd = 0.02;
// InternViT's ls1/ls2 start at initializer_factor * 1.0 in the reference; a
// smaller constant keeps the residual stream of a random 24-45 layer ViT
// from growing layer by layer (the values are noise either way).
inline constexpr float kLayerScaleInit = 0.1f;

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  Init init = Init::kNormal;

  int64_t numel() const;
};

// All tensors of the checkpoint, in state_dict order (vision_model,
// language_model, mlp1): InternViT (300M or 6B style from norm_type /
// qkv_bias / qk_normalization), the mlp1 projector, and the decoder under the
// HF names of its architecture (Qwen2 / LLaMA: embed_tokens, q/k/v/o_proj,
// gate/up/down_proj, lm_head; InternLM2: tok_embeddings, fused wqkv grouped
// per kv head, wo, w1/w2/w3, output).
std::vector<TensorSpec> CheckpointTensors(const InternVLConfig& config);

}  // namespace internvl::modelgen
