// Typed view of an InternVL checkpoint's config.json (InternVLChatConfig with
// its vision_config = InternVisionConfig and llm_config = Qwen2 / InternLM2 /
// LLaMA config). Defaults equal the reference classes' defaults; unknown
// values of enumerated fields are rejected. Architecture is never guessed from
// tensor shapes.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace internvl {

// Named constants of the InternVL preprocessing (not model-dependent).
inline constexpr int kDefaultImageSize = 448;
inline constexpr float kImageNetMean[3] = {0.485f, 0.456f, 0.406f};
inline constexpr float kImageNetStd[3] = {0.229f, 0.224f, 0.225f};

// InternVisionConfig (configuration_intern_vit.py).
struct VisionConfig {
  int num_channels = 3;
  int patch_size = 14;
  int image_size = 224;
  bool qkv_bias = false;
  int hidden_size = 3200;
  int num_attention_heads = 25;
  int intermediate_size = 12800;
  bool qk_normalization = true;
  int num_hidden_layers = 48;
  std::string hidden_act = "gelu";
  enum class Norm { kRmsNorm, kLayerNorm } norm_type = Norm::kRmsNorm;
  double layer_norm_eps = 1e-6;
  double drop_path_rate = 0.0;
};

enum class LlmArch { kQwen2, kInternLM2, kLlama };
const char* LlmArchName(LlmArch arch);

struct RopeScaling {
  std::string type;  // "dynamic" (NTK) or "linear"
  double factor = 1.0;
};

// `quantization_config` of a 4-bit AWQ checkpoint (AutoAWQ / LMDeploy, as
// OpenGVLab's InternVL2-*-AWQ publish it): the layers stored as qweight /
// qzeros / scales instead of weight.
struct AwqConfig {
  int bits = 4;
  int group_size = 128;
  bool zero_point = true;
  std::string version = "gemm";
};

// The decoder's config (Qwen2Config / InternLM2Config / LlamaConfig), with the
// per-architecture defaults applied.
struct LlmConfig {
  LlmArch arch = LlmArch::kQwen2;
  std::string architecture;  // e.g. "Qwen2ForCausalLM"
  int vocab_size = 0;
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_hidden_layers = 0;
  int num_attention_heads = 0;
  int num_key_value_heads = 0;
  int max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  std::optional<RopeScaling> rope_scaling;
  bool attention_bias = false;  // q/k/v biases (Qwen2: always; InternLM2: `bias`)
  std::string hidden_act = "silu";
  // InternVLChatConfig forces tie_word_embeddings = False on the LLM config.
  bool tie_word_embeddings = false;
  std::optional<int> bos_token_id;
  std::vector<int> eos_token_ids;
  std::optional<int> pad_token_id;
  // Set for AWQ checkpoints (read from config.json's quantization_config).
  std::optional<AwqConfig> awq;

  int head_dim() const { return hidden_size / num_attention_heads; }
};

// InternVLChatConfig (configuration_internvl_chat.py).
struct InternVLConfig {
  VisionConfig vision;
  LlmConfig llm;
  int select_layer = -1;
  std::optional<int> force_image_size;
  double downsample_ratio = 0.5;
  std::string template_name;  // "Hermes-2", "internlm2-chat", "internvl2_5", "phi3-chat"
  bool dynamic_image_size = false;
  bool use_thumbnail = false;
  std::string ps_version = "v1";  // "v1" or "v2"
  int min_dynamic_patch = 1;
  int max_dynamic_patch = 6;
  std::optional<std::string> system_message;
  // mx262/MiniMonkey (InternVL2-2B weights; its own multi-scale tiling and
  // optional token compression, core/preprocess/minimonkey.h): `architectures`
  // or an `auto_map` entry names MiniMonkey.
  bool minimonkey = false;

  // The tile side the model consumes (force_image_size or vision image_size).
  int image_size() const { return force_image_size.value_or(vision.image_size); }
  int patch_size() const { return vision.patch_size; }
  // Tokens per tile after pixel shuffle: (image/patch)^2 * downsample^2 (256).
  int num_image_token() const;
};

// Parses config.json text. `where` names the file in errors.
absl::StatusOr<InternVLConfig> ParseInternVLConfig(absl::string_view json_text,
                                                   absl::string_view where = "config.json");
// Reads and parses `dir/config.json`.
absl::StatusOr<InternVLConfig> LoadInternVLConfig(const std::string& model_dir);

// generation_config.json: the eos ids generation stops on (may be absent).
struct GenerationConfig {
  std::vector<int> eos_token_ids;
  std::optional<int> bos_token_id;
  std::optional<int> pad_token_id;
};
absl::StatusOr<GenerationConfig> LoadGenerationConfig(const std::string& model_dir);

// Serialises back to config.json (for make-model and trainer checkpoints).
std::string InternVLConfigToJson(const InternVLConfig& config);

}  // namespace internvl
