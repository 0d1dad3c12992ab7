#include "core/modelgen/checkpoint_layout.h"

#include "absl/strings/str_cat.h"

namespace internvl::modelgen {
namespace {

// Pixel shuffle with downsample_ratio r folds 1/r^2 patches into one token:
// mlp1's input width is vit_hidden / r^2 (4096 for InternViT-300M, r = 0.5).
int64_t ProjectorInputWidth(const InternVLConfig& c) {
  const double scale = 1.0 / (c.downsample_ratio * c.downsample_ratio);
  return static_cast<int64_t>(c.vision.hidden_size * scale + 0.5);
}

void AddVision(const InternVLConfig& c, std::vector<TensorSpec>& out) {
  const VisionConfig& v = c.vision;
  const int64_t d = v.hidden_size;
  const int64_t grid = c.image_size() / v.patch_size;
  const int64_t positions = grid * grid + 1;  // patches + CLS
  const std::string e = "vision_model.embeddings.";
  out.push_back({e + "class_embedding", {1, 1, d}, Init::kNormal});
  out.push_back({e + "patch_embedding.weight", {d, v.num_channels, v.patch_size, v.patch_size}, Init::kNormal});
  out.push_back({e + "patch_embedding.bias", {d}, Init::kZeros});
  out.push_back({e + "position_embedding", {1, positions, d}, Init::kNormal});
  const bool layer_norm = v.norm_type == VisionConfig::Norm::kLayerNorm;
  for (int i = 0; i < v.num_hidden_layers; ++i) {
    const std::string p = absl::StrCat("vision_model.encoder.layers.", i, ".");
    out.push_back({p + "attn.qkv.weight", {3 * d, d}, Init::kNormal});
    if (v.qkv_bias) out.push_back({p + "attn.qkv.bias", {3 * d}, Init::kZeros});
    // InternAttention: q_norm / k_norm are RMSNorm over the full width.
    if (v.qk_normalization) {
      out.push_back({p + "attn.q_norm.weight", {d}, Init::kOnes});
      out.push_back({p + "attn.k_norm.weight", {d}, Init::kOnes});
    }
    out.push_back({p + "attn.proj.weight", {d, d}, Init::kNormal});
    out.push_back({p + "attn.proj.bias", {d}, Init::kZeros});
    out.push_back({p + "ls1", {d}, Init::kLayerScale});
    out.push_back({p + "ls2", {d}, Init::kLayerScale});
    out.push_back({p + "mlp.fc1.weight", {v.intermediate_size, d}, Init::kNormal});
    out.push_back({p + "mlp.fc1.bias", {v.intermediate_size}, Init::kZeros});
    out.push_back({p + "mlp.fc2.weight", {d, v.intermediate_size}, Init::kNormal});
    out.push_back({p + "mlp.fc2.bias", {d}, Init::kZeros});
    for (const char* norm : {"norm1", "norm2"}) {
      out.push_back({absl::StrCat(p, norm, ".weight"), {d}, Init::kOnes});
      if (layer_norm) out.push_back({absl::StrCat(p, norm, ".bias"), {d}, Init::kZeros});
    }
  }
}

void AddProjector(const InternVLConfig& c, std::vector<TensorSpec>& out) {
  // mlp1 = Sequential(LayerNorm(4C), Linear(4C, H), GELU, Linear(H, H)).
  const int64_t in = ProjectorInputWidth(c);
  const int64_t h = c.llm.hidden_size;
  out.push_back({"mlp1.0.weight", {in}, Init::kOnes});
  out.push_back({"mlp1.0.bias", {in}, Init::kZeros});
  out.push_back({"mlp1.1.weight", {h, in}, Init::kNormal});
  out.push_back({"mlp1.1.bias", {h}, Init::kZeros});
  out.push_back({"mlp1.3.weight", {h, h}, Init::kNormal});
  out.push_back({"mlp1.3.bias", {h}, Init::kZeros});
}

void AddLlm(const LlmConfig& l, std::vector<TensorSpec>& out) {
  const int64_t h = l.hidden_size;
  const int64_t hd = l.head_dim();
  const int64_t q = l.num_attention_heads * hd;
  const int64_t kv = l.num_key_value_heads * hd;
  const int64_t ffn = l.intermediate_size;
  const std::string m = "language_model.model.";
  if (l.arch == LlmArch::kInternLM2) {
    out.push_back({m + "tok_embeddings.weight", {l.vocab_size, h}, Init::kNormal});
    for (int i = 0; i < l.num_hidden_layers; ++i) {
      const std::string p = absl::StrCat(m, "layers.", i, ".");
      // wqkv rows: per kv head, its q heads then its k and v head (all rows
      // together: (heads + 2 * kv_heads) * head_dim).
      out.push_back({p + "attention.wqkv.weight", {q + 2 * kv, h}, Init::kNormal});
      if (l.attention_bias) out.push_back({p + "attention.wqkv.bias", {q + 2 * kv}, Init::kZeros});
      out.push_back({p + "attention.wo.weight", {h, q}, Init::kNormal});
      if (l.attention_bias) out.push_back({p + "attention.wo.bias", {h}, Init::kZeros});
      out.push_back({p + "feed_forward.w1.weight", {ffn, h}, Init::kNormal});
      out.push_back({p + "feed_forward.w3.weight", {ffn, h}, Init::kNormal});
      out.push_back({p + "feed_forward.w2.weight", {h, ffn}, Init::kNormal});
      out.push_back({p + "attention_norm.weight", {h}, Init::kOnes});
      out.push_back({p + "ffn_norm.weight", {h}, Init::kOnes});
    }
    out.push_back({m + "norm.weight", {h}, Init::kOnes});
    out.push_back({"language_model.output.weight", {l.vocab_size, h}, Init::kNormal});
    return;
  }
  // Qwen2 and LLaMA share the HF names; Qwen2 adds q/k/v biases (o_proj never
  // has one), LLaMA has them only with attention_bias.
  out.push_back({m + "embed_tokens.weight", {l.vocab_size, h}, Init::kNormal});
  for (int i = 0; i < l.num_hidden_layers; ++i) {
    const std::string p = absl::StrCat(m, "layers.", i, ".");
    const std::pair<const char*, int64_t> projections[] = {{"q_proj", q}, {"k_proj", kv}, {"v_proj", kv}};
    for (const auto& [name, rows] : projections) {
      out.push_back({absl::StrCat(p, "self_attn.", name, ".weight"), {rows, h}, Init::kNormal});
      if (l.attention_bias) out.push_back({absl::StrCat(p, "self_attn.", name, ".bias"), {rows}, Init::kZeros});
    }
    out.push_back({p + "self_attn.o_proj.weight", {h, q}, Init::kNormal});
    if (l.arch == LlmArch::kLlama && l.attention_bias)
      out.push_back({p + "self_attn.o_proj.bias", {h}, Init::kZeros});
    out.push_back({p + "mlp.gate_proj.weight", {ffn, h}, Init::kNormal});
    out.push_back({p + "mlp.up_proj.weight", {ffn, h}, Init::kNormal});
    out.push_back({p + "mlp.down_proj.weight", {h, ffn}, Init::kNormal});
    out.push_back({p + "input_layernorm.weight", {h}, Init::kOnes});
    out.push_back({p + "post_attention_layernorm.weight", {h}, Init::kOnes});
  }
  out.push_back({m + "norm.weight", {h}, Init::kOnes});
  out.push_back({"language_model.lm_head.weight", {l.vocab_size, h}, Init::kNormal});
}

}  // namespace

int64_t TensorSpec::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::vector<TensorSpec> CheckpointTensors(const InternVLConfig& config) {
  std::vector<TensorSpec> out;
  AddVision(config, out);
  AddLlm(config.llm, out);
  AddProjector(config, out);
  return out;
}

}  // namespace internvl::modelgen
