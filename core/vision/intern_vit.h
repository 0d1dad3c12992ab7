// InternViT (modeling_intern_vit.py): the vision encoder of InternVL, in both
// variants read from VisionConfig:
//  - 300M style: LayerNorm (eps 1e-6), qkv bias, no qk-normalisation;
//  - 6B style: RMSNorm, no qkv bias, q/k RMS-normalised over the full width
//    before the split into heads.
// Modules are registered under the checkpoint's key names (relative to
// "vision_model."), so weights load by name.
#pragma once

#include <torch/nn/cloneable.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/normalization.h>

#include "core/config.h"

namespace internvl {

// InternRMSNorm: x * rsqrt(mean(x^2) + eps) computed in fp32, times weight.
// [..., C] -> [..., C]
class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t dim, double eps);
  at::Tensor forward(const at::Tensor& x);
  at::Tensor weight;

 private:
  double eps_;
};
TORCH_MODULE(RMSNorm);

// torch::nn::Linear's parameters ("weight" [out, in], "bias" [out] unless
// `bias` is false) and forward, allocated but not initialized: a
// torch::nn::Linear draws kaiming-uniform weights at construction, one value
// at a time, which loading then overwrites (1.3 s of every InternViT-300M
// load on the 2-core Zen 4; InternViT-6B has 20x the parameters). Loading
// fills every parameter (LoadModuleWeights fails on a missing one).
class LoadedLinearImpl : public torch::nn::Cloneable<LoadedLinearImpl> {
 public:
  LoadedLinearImpl(int64_t in, int64_t out, bool bias = true);
  void reset() override;
  at::Tensor forward(const at::Tensor& x);
  at::Tensor weight, bias;

 private:
  int64_t in_, out_;
  bool has_bias_;
};
TORCH_MODULE(LoadedLinear);

// The vision block norm: LayerNorm or RMSNorm per config.norm_type.
class VitNormImpl : public torch::nn::Module {
 public:
  VitNormImpl(const VisionConfig& config);
  at::Tensor forward(const at::Tensor& x);
  at::Tensor weight, bias;  // bias undefined for RMSNorm

 private:
  bool layer_norm_;
  double eps_;
};
TORCH_MODULE(VitNorm);

// InternVisionEmbeddings: Conv2d patchify + CLS token + position embedding
// (bicubically resized when the input is not image_size). [B,3,H,W] -> [B,1+HW/p^2,C]
class VisionEmbeddingsImpl : public torch::nn::Module {
 public:
  explicit VisionEmbeddingsImpl(const VisionConfig& config);
  at::Tensor forward(const at::Tensor& pixel_values);
  at::Tensor class_embedding, position_embedding;
  torch::nn::Conv2d patch_embedding{nullptr};

 private:
  int64_t grid_;  // patches per side at image_size
};
TORCH_MODULE(VisionEmbeddings);

// InternAttention (naive path): fused qkv (3, heads, head_dim). [B,N,C] -> [B,N,C]
class VisionAttentionImpl : public torch::nn::Module {
 public:
  explicit VisionAttentionImpl(const VisionConfig& config);
  at::Tensor forward(const at::Tensor& x);
  LoadedLinear qkv{nullptr}, proj{nullptr};
  RMSNorm q_norm{nullptr}, k_norm{nullptr};
  // fp32 inference on the CPU: each (tile, head) pair on one thread, its
  // queries this many rows at a time, so that a block's scores ([rows, N],
  // 256 KB for a 448px tile) stay in the core's L2 from the first product
  // through the softmax to the second; no [heads, N, N] scores. 0: the
  // reference's order (all of a group of heads' scores, then the softmax),
  // which bf16 takes where the fused kernel does not run (attention.h):
  // oneDNN's bf16 products of 64-row blocks ran slower than the whole
  // scores' (bench_vision, 2.3-2.5 s against 2.6-2.9 s per tile on a Zen 4).
  int64_t query_block = 64;

 private:
  int64_t heads_, head_dim_;
  double scale_;
};
TORCH_MODULE(VisionAttention);

// InternMLP: fc1 -> GELU (exact erf) -> fc2. [B,N,C] -> [B,N,C]
class VisionMlpImpl : public torch::nn::Module {
 public:
  explicit VisionMlpImpl(const VisionConfig& config);
  at::Tensor forward(const at::Tensor& x);
  LoadedLinear fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(VisionMlp);

// InternVisionEncoderLayer: x += ls1 * attn(norm1(x)); x += ls2 * mlp(norm2(x)).
class VisionLayerImpl : public torch::nn::Module {
 public:
  explicit VisionLayerImpl(const VisionConfig& config);
  at::Tensor forward(const at::Tensor& x);
  VisionAttention attn{nullptr};
  VisionMlp mlp{nullptr};
  VitNorm norm1{nullptr}, norm2{nullptr};
  at::Tensor ls1, ls2;
  // CPU inference runs the attention a few tiles and the MLP a few rows at a
  // time, each piece's largest temporary at most this many bytes (under
  // glibc's 32 MB mmap threshold, so buffers are reused, not fresh pages).
  int64_t max_temp_bytes = int64_t{24} << 20;
};
TORCH_MODULE(VisionLayer);

class VisionEncoderImpl : public torch::nn::Module {
 public:
  explicit VisionEncoderImpl(const VisionConfig& config);
  torch::nn::ModuleList layers{nullptr};
};
TORCH_MODULE(VisionEncoder);

// InternVisionModel. forward returns the hidden state after `num_layers_run`
// layers (all by default); no final norm, as the reference.
class InternVisionModelImpl : public torch::nn::Module {
 public:
  explicit InternVisionModelImpl(const VisionConfig& config);
  // [B,3,H,W] -> [B,1+N,C]. `num_layers` < 0 runs every layer.
  at::Tensor forward(const at::Tensor& pixel_values, int64_t num_layers = -1);
  VisionEmbeddings embeddings{nullptr};
  VisionEncoder encoder{nullptr};

 private:
  int64_t num_hidden_layers_;
};
TORCH_MODULE(InternVisionModel);

}  // namespace internvl
