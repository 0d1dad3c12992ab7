#include "core/config.h"

#include <cctype>
#include <cmath>
#include <filesystem>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/files.h"
#include "core/status.h"
#include "nlohmann/json.hpp"

namespace internvl {
namespace {

using json = nlohmann::json;

// Most patches per side of a tile: bounds the patch grid so that the counts
// derived from it (num_image_token, position embeddings) fit an int. Real
// models use 448 / 14 = 32.
constexpr int kMaxPatchesPerSide = 4096;

// Reads optional typed fields with clear errors naming the key.
class Reader {
 public:
  Reader(const json& obj, std::string where) : obj_(obj), where_(std::move(where)) {}

  template <typename T>
  absl::Status Get(const char* key, T& out) const {
    auto it = obj_.find(key);
    if (it == obj_.end() || it->is_null()) return absl::OkStatus();
    try {
      if constexpr (std::is_same_v<T, bool>) {
        // InternVL configs write booleans as 0/1 in places (use_backbone_lora).
        if (it->is_number_integer()) {
          out = it->template get<int64_t>() != 0;
          return absl::OkStatus();
        }
        if (!it->is_boolean()) throw std::runtime_error("expected a boolean");
      } else if constexpr (std::is_integral_v<T>) {
        if (!it->is_number_integer()) throw std::runtime_error("expected an integer");
      } else if constexpr (std::is_floating_point_v<T>) {
        if (!it->is_number()) throw std::runtime_error("expected a number");
      } else if constexpr (std::is_same_v<T, std::string>) {
        if (!it->is_string()) throw std::runtime_error("expected a string");
      }
      out = it->template get<T>();
    } catch (const std::exception& e) {
      return absl::InvalidArgumentError(
          absl::StrCat(where_, ": field '", key, "' has the wrong type (", e.what(), "): ", it->dump()));
    }
    return absl::OkStatus();
  }

  template <typename T>
  absl::Status GetOptional(const char* key, std::optional<T>& out) const {
    if (!obj_.contains(key) || obj_[key].is_null()) return absl::OkStatus();
    T v{};
    INTERNVL_RETURN_IF_ERROR(Get(key, v));
    out = v;
    return absl::OkStatus();
  }

  // eos_token_id may be an int or a list of ints.
  absl::Status GetIdList(const char* key, std::vector<int>& out) const {
    auto it = obj_.find(key);
    if (it == obj_.end() || it->is_null()) return absl::OkStatus();
    out.clear();
    if (it->is_number_integer()) {
      out.push_back(it->get<int>());
    } else if (it->is_array()) {
      for (const json& v : *it) {
        if (!v.is_number_integer())
          return absl::InvalidArgumentError(absl::StrCat(where_, ": '", key, "' must hold integers"));
        out.push_back(v.get<int>());
      }
    } else {
      return absl::InvalidArgumentError(absl::StrCat(where_, ": '", key, "' must be an integer or a list"));
    }
    return absl::OkStatus();
  }

  bool Has(const char* key) const { return obj_.contains(key) && !obj_[key].is_null(); }
  const std::string& where() const { return where_; }

 private:
  const json& obj_;
  std::string where_;
};

absl::Status ParseVision(const json& j, const std::string& where, VisionConfig& v) {
  Reader r(j, where);
  INTERNVL_RETURN_IF_ERROR(r.Get("num_channels", v.num_channels));
  INTERNVL_RETURN_IF_ERROR(r.Get("patch_size", v.patch_size));
  INTERNVL_RETURN_IF_ERROR(r.Get("image_size", v.image_size));
  INTERNVL_RETURN_IF_ERROR(r.Get("qkv_bias", v.qkv_bias));
  INTERNVL_RETURN_IF_ERROR(r.Get("hidden_size", v.hidden_size));
  INTERNVL_RETURN_IF_ERROR(r.Get("num_attention_heads", v.num_attention_heads));
  INTERNVL_RETURN_IF_ERROR(r.Get("intermediate_size", v.intermediate_size));
  INTERNVL_RETURN_IF_ERROR(r.Get("qk_normalization", v.qk_normalization));
  INTERNVL_RETURN_IF_ERROR(r.Get("num_hidden_layers", v.num_hidden_layers));
  INTERNVL_RETURN_IF_ERROR(r.Get("hidden_act", v.hidden_act));
  INTERNVL_RETURN_IF_ERROR(r.Get("layer_norm_eps", v.layer_norm_eps));
  INTERNVL_RETURN_IF_ERROR(r.Get("drop_path_rate", v.drop_path_rate));
  std::string norm = "rms_norm";
  INTERNVL_RETURN_IF_ERROR(r.Get("norm_type", norm));
  if (norm == "rms_norm") {
    v.norm_type = VisionConfig::Norm::kRmsNorm;
  } else if (norm == "layer_norm") {
    v.norm_type = VisionConfig::Norm::kLayerNorm;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": unknown norm_type '", norm, "' (expected rms_norm or layer_norm)"));
  }
  if (v.hidden_act != "gelu")
    return absl::InvalidArgumentError(absl::StrCat(where, ": unsupported hidden_act '", v.hidden_act, "'"));
  if (v.hidden_size <= 0 || v.num_attention_heads <= 0 || v.hidden_size % v.num_attention_heads != 0)
    return absl::InvalidArgumentError(absl::StrCat(where, ": hidden_size ", v.hidden_size,
                                                   " is not a positive multiple of num_attention_heads ",
                                                   v.num_attention_heads));
  if (v.patch_size <= 0 || v.image_size <= 0 || v.image_size % v.patch_size != 0)
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": image_size ", v.image_size, " is not a multiple of patch_size ", v.patch_size));
  if (v.num_hidden_layers <= 0 || v.intermediate_size <= 0)
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": num_hidden_layers and intermediate_size must be positive"));
  return absl::OkStatus();
}

absl::Status ParseLlm(const json& j, const std::string& where, LlmConfig& c) {
  Reader r(j, where);
  std::string arch;
  if (j.contains("architectures") && j["architectures"].is_array() && !j["architectures"].empty() &&
      j["architectures"][0].is_string())
    arch = j["architectures"][0].get<std::string>();
  std::string model_type;
  INTERNVL_RETURN_IF_ERROR(r.Get("model_type", model_type));
  c.architecture = arch;
  // Per-architecture reference defaults (transformers 4.37 / remote code).
  if (arch == "Qwen2ForCausalLM" || (arch.empty() && model_type == "qwen2")) {
    c.arch = LlmArch::kQwen2;
    c.vocab_size = 151936;
    c.hidden_size = 4096;
    c.intermediate_size = 22016;
    c.num_hidden_layers = 32;
    c.num_attention_heads = 32;
    c.num_key_value_heads = 32;
    c.max_position_embeddings = 32768;
    c.rope_theta = 10000.0;
    c.attention_bias = true;  // Qwen2 always has q/k/v biases
  } else if (arch == "InternLM2ForCausalLM" || (arch.empty() && model_type == "internlm2")) {
    c.arch = LlmArch::kInternLM2;
    c.vocab_size = 103168;
    c.hidden_size = 4096;
    c.intermediate_size = 11008;
    c.num_hidden_layers = 32;
    c.num_attention_heads = 32;
    c.num_key_value_heads = -1;  // defaults to num_attention_heads
    c.max_position_embeddings = 2048;
    c.attention_bias = true;  // InternLM2Config(bias=True); real configs set false
    INTERNVL_RETURN_IF_ERROR(r.Get("bias", c.attention_bias));
  } else if (arch == "LlamaForCausalLM" || (arch.empty() && model_type == "llama")) {
    c.arch = LlmArch::kLlama;
    c.vocab_size = 32000;
    c.hidden_size = 4096;
    c.intermediate_size = 11008;
    c.num_hidden_layers = 32;
    c.num_attention_heads = 32;
    c.num_key_value_heads = -1;
    c.max_position_embeddings = 2048;
    c.attention_bias = false;
    INTERNVL_RETURN_IF_ERROR(r.Get("attention_bias", c.attention_bias));
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": unsupported LLM architecture '", arch.empty() ? model_type : arch,
                     "' (supported: Qwen2ForCausalLM, InternLM2ForCausalLM, LlamaForCausalLM)"));
  }
  INTERNVL_RETURN_IF_ERROR(r.Get("vocab_size", c.vocab_size));
  INTERNVL_RETURN_IF_ERROR(r.Get("hidden_size", c.hidden_size));
  INTERNVL_RETURN_IF_ERROR(r.Get("intermediate_size", c.intermediate_size));
  INTERNVL_RETURN_IF_ERROR(r.Get("num_hidden_layers", c.num_hidden_layers));
  INTERNVL_RETURN_IF_ERROR(r.Get("num_attention_heads", c.num_attention_heads));
  INTERNVL_RETURN_IF_ERROR(r.Get("num_key_value_heads", c.num_key_value_heads));
  if (c.num_key_value_heads <= 0) c.num_key_value_heads = c.num_attention_heads;
  INTERNVL_RETURN_IF_ERROR(r.Get("max_position_embeddings", c.max_position_embeddings));
  INTERNVL_RETURN_IF_ERROR(r.Get("rms_norm_eps", c.rms_norm_eps));
  INTERNVL_RETURN_IF_ERROR(r.Get("rope_theta", c.rope_theta));
  INTERNVL_RETURN_IF_ERROR(r.Get("hidden_act", c.hidden_act));
  if (c.hidden_act != "silu")
    return absl::InvalidArgumentError(absl::StrCat(where, ": unsupported hidden_act '", c.hidden_act, "'"));
  if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) {
    const json& rs = j["rope_scaling"];
    if (!rs.is_object()) return absl::InvalidArgumentError(absl::StrCat(where, ": rope_scaling must be an object"));
    RopeScaling s;
    Reader rr(rs, where + ".rope_scaling");
    INTERNVL_RETURN_IF_ERROR(rr.Get("type", s.type));
    if (s.type.empty()) INTERNVL_RETURN_IF_ERROR(rr.Get("rope_type", s.type));
    INTERNVL_RETURN_IF_ERROR(rr.Get("factor", s.factor));
    if (s.type != "dynamic" && s.type != "linear" && s.type != "default")
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": unsupported rope_scaling type '", s.type, "' (supported: dynamic, linear)"));
    if (s.type != "default") c.rope_scaling = s;
  }
  INTERNVL_RETURN_IF_ERROR(r.GetOptional("bos_token_id", c.bos_token_id));
  INTERNVL_RETURN_IF_ERROR(r.GetOptional("pad_token_id", c.pad_token_id));
  INTERNVL_RETURN_IF_ERROR(r.GetIdList("eos_token_id", c.eos_token_ids));
  // InternVLChatConfig: self.llm_config.tie_word_embeddings = False.
  c.tie_word_embeddings = false;
  if (c.vocab_size <= 0 || c.hidden_size <= 0 || c.num_hidden_layers <= 0 || c.intermediate_size <= 0)
    return absl::InvalidArgumentError(absl::StrCat(where, ": sizes must be positive"));
  if (c.num_attention_heads <= 0 || c.hidden_size % c.num_attention_heads != 0)
    return absl::InvalidArgumentError(absl::StrCat(
        where, ": hidden_size ", c.hidden_size, " is not a multiple of num_attention_heads ", c.num_attention_heads));
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    return absl::InvalidArgumentError(absl::StrCat(where, ": num_attention_heads ", c.num_attention_heads,
                                                   " is not a multiple of num_key_value_heads ",
                                                   c.num_key_value_heads));
  return absl::OkStatus();
}

}  // namespace

const char* LlmArchName(LlmArch arch) {
  switch (arch) {
    case LlmArch::kQwen2:
      return "qwen2";
    case LlmArch::kInternLM2:
      return "internlm2";
    case LlmArch::kLlama:
      return "llama";
  }
  return "?";
}

int InternVLConfig::num_image_token() const {
  const int side = image_size() / patch_size();
  return static_cast<int>(std::lround(side * side * downsample_ratio * downsample_ratio));
}

static absl::StatusOr<AwqConfig> ParseAwqConfig(const json& q, const std::string& where) {
  if (!q.is_object()) return absl::InvalidArgumentError(absl::StrCat(where, " is not a JSON object"));
  Reader r(q, where);
  std::string method;
  INTERNVL_RETURN_IF_ERROR(r.Get("quant_method", method));
  if (method != "awq") {
    return absl::UnimplementedError(
        absl::StrCat(where, ": quant_method '", method, "' is not supported (4-bit AWQ checkpoints are)"));
  }
  AwqConfig a;
  INTERNVL_RETURN_IF_ERROR(r.Get("bits", a.bits));
  INTERNVL_RETURN_IF_ERROR(r.Get("group_size", a.group_size));
  INTERNVL_RETURN_IF_ERROR(r.Get("zero_point", a.zero_point));
  INTERNVL_RETURN_IF_ERROR(r.Get("version", a.version));
  for (char& ch : a.version) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  if (a.bits != 4 || !a.zero_point || a.version != "gemm" || a.group_size <= 0) {
    return absl::UnimplementedError(absl::StrCat(where, ": AWQ with bits ", a.bits, ", zero_point ", a.zero_point,
                                                 ", version '", a.version, "', group_size ", a.group_size,
                                                 " is not supported (4 bits, zero_point, gemm)"));
  }
  return a;
}

// MiniMonkey's checkpoint is InternVL2-2B's with its own model class
// (MiniMonkeyChatModel in modeling_minimonkey_chat.py): look for the name in
// `architectures` and `auto_map`, case-insensitively.
static bool NamesMiniMonkey(const json& j) {
  auto names = [](const json& v) {
    return v.is_string() && absl::StrContains(absl::AsciiStrToLower(v.get<std::string>()), "minimonkey");
  };
  for (const char* key : {"architectures", "auto_map"}) {
    if (!j.contains(key)) continue;
    const json& v = j[key];
    if (v.is_array() || v.is_object()) {
      for (const json& e : v)
        if (names(e)) return true;
    } else if (names(v)) {
      return true;
    }
  }
  return false;
}

absl::StatusOr<InternVLConfig> ParseInternVLConfig(absl::string_view json_text, absl::string_view where_sv) {
  const std::string where(where_sv);
  json j;
  try {
    j = json::parse(json_text);
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(where, " is not valid JSON: ", e.what()));
  }
  if (!j.is_object()) return absl::InvalidArgumentError(absl::StrCat(where, " is not a JSON object"));
  InternVLConfig c;
  Reader r(j, where);
  if (!j.contains("vision_config") || !j["vision_config"].is_object())
    return absl::InvalidArgumentError(absl::StrCat(where, ": missing vision_config (not an InternVL checkpoint?)"));
  if (!j.contains("llm_config") || !j["llm_config"].is_object())
    return absl::InvalidArgumentError(absl::StrCat(where, ": missing llm_config (not an InternVL checkpoint?)"));
  INTERNVL_RETURN_IF_ERROR(ParseVision(j["vision_config"], where + ".vision_config", c.vision));
  INTERNVL_RETURN_IF_ERROR(ParseLlm(j["llm_config"], where + ".llm_config", c.llm));
  INTERNVL_RETURN_IF_ERROR(r.Get("select_layer", c.select_layer));
  INTERNVL_RETURN_IF_ERROR(r.GetOptional("force_image_size", c.force_image_size));
  INTERNVL_RETURN_IF_ERROR(r.Get("downsample_ratio", c.downsample_ratio));
  INTERNVL_RETURN_IF_ERROR(r.Get("template", c.template_name));
  INTERNVL_RETURN_IF_ERROR(r.Get("dynamic_image_size", c.dynamic_image_size));
  INTERNVL_RETURN_IF_ERROR(r.Get("use_thumbnail", c.use_thumbnail));
  INTERNVL_RETURN_IF_ERROR(r.Get("ps_version", c.ps_version));
  INTERNVL_RETURN_IF_ERROR(r.Get("min_dynamic_patch", c.min_dynamic_patch));
  INTERNVL_RETURN_IF_ERROR(r.Get("max_dynamic_patch", c.max_dynamic_patch));
  INTERNVL_RETURN_IF_ERROR(r.GetOptional("system_message", c.system_message));
  c.minimonkey = NamesMiniMonkey(j);
  // LMDeploy writes quantization_config at the top level; a bare LLM keeps it
  // in its own config.
  for (const json* holder : {&j, &j["llm_config"]}) {
    if (!holder->contains("quantization_config") || (*holder)["quantization_config"].is_null()) continue;
    INTERNVL_ASSIGN_OR_RETURN(c.llm.awq,
                              ParseAwqConfig((*holder)["quantization_config"], where + ".quantization_config"));
    break;
  }
  if (c.ps_version != "v1" && c.ps_version != "v2")
    return absl::InvalidArgumentError(absl::StrCat(where, ": unknown ps_version '", c.ps_version, "' (v1 or v2)"));
  if (!(c.downsample_ratio > 0 && c.downsample_ratio <= 1))
    return absl::InvalidArgumentError(absl::StrCat(where, ": downsample_ratio must be in (0, 1]"));
  const int side = c.image_size() / c.patch_size();
  if (c.image_size() <= 0 || side > kMaxPatchesPerSide)
    return absl::InvalidArgumentError(absl::StrCat(where, ": image_size ", c.image_size(), " with patch_size ",
                                                   c.patch_size(), " is outside [1, ", kMaxPatchesPerSide,
                                                   " patches per side]"));
  const double scaled = side * c.downsample_ratio;
  if (c.image_size() % c.patch_size() != 0 || std::abs(scaled - std::round(scaled)) > 1e-9)
    return absl::InvalidArgumentError(absl::StrCat(where, ": image_size ", c.image_size(), ", patch_size ",
                                                   c.patch_size(), " and downsample_ratio ", c.downsample_ratio,
                                                   " do not give a whole token grid"));
  if (c.select_layer >= c.vision.num_hidden_layers || c.select_layer < -c.vision.num_hidden_layers)
    return absl::InvalidArgumentError(absl::StrCat(where, ": select_layer ", c.select_layer, " is out of range for ",
                                                   c.vision.num_hidden_layers, " layers"));
  if (c.min_dynamic_patch < 1 || c.max_dynamic_patch < c.min_dynamic_patch)
    return absl::InvalidArgumentError(absl::StrCat(where, ": need 1 <= min_dynamic_patch <= max_dynamic_patch"));
  return c;
}

absl::StatusOr<InternVLConfig> LoadInternVLConfig(const std::string& model_dir) {
  const std::string path = (std::filesystem::path(model_dir) / "config.json").string();
  auto text = ReadFile(path, 16 << 20);
  if (!text.ok()) {
    if (absl::IsNotFound(text.status()))
      return absl::NotFoundError(absl::StrCat("not a model directory: ", path, " does not exist"));
    return text.status();
  }
  return ParseInternVLConfig(*text, path);
}

absl::StatusOr<GenerationConfig> LoadGenerationConfig(const std::string& model_dir) {
  GenerationConfig g;
  const std::string path = (std::filesystem::path(model_dir) / "generation_config.json").string();
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return g;
  INTERNVL_ASSIGN_OR_RETURN(std::string text, ReadFile(path, 1 << 20));
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, " is not valid JSON: ", e.what()));
  }
  Reader r(j, path);
  INTERNVL_RETURN_IF_ERROR(r.GetIdList("eos_token_id", g.eos_token_ids));
  INTERNVL_RETURN_IF_ERROR(r.GetOptional("bos_token_id", g.bos_token_id));
  INTERNVL_RETURN_IF_ERROR(r.GetOptional("pad_token_id", g.pad_token_id));
  return g;
}

std::string InternVLConfigToJson(const InternVLConfig& c) {
  json v = {
      {"architectures", {"InternVisionModel"}},
      {"model_type", "intern_vit_6b"},
      {"num_channels", c.vision.num_channels},
      {"patch_size", c.vision.patch_size},
      {"image_size", c.vision.image_size},
      {"qkv_bias", c.vision.qkv_bias},
      {"hidden_size", c.vision.hidden_size},
      {"num_attention_heads", c.vision.num_attention_heads},
      {"intermediate_size", c.vision.intermediate_size},
      {"qk_normalization", c.vision.qk_normalization},
      {"num_hidden_layers", c.vision.num_hidden_layers},
      {"hidden_act", c.vision.hidden_act},
      {"norm_type", c.vision.norm_type == VisionConfig::Norm::kRmsNorm ? "rms_norm" : "layer_norm"},
      {"layer_norm_eps", c.vision.layer_norm_eps},
      {"drop_path_rate", c.vision.drop_path_rate},
  };
  const char* arch_name = c.llm.arch == LlmArch::kQwen2       ? "Qwen2ForCausalLM"
                          : c.llm.arch == LlmArch::kInternLM2 ? "InternLM2ForCausalLM"
                                                              : "LlamaForCausalLM";
  json l = {
      {"architectures", {arch_name}},
      {"model_type", LlmArchName(c.llm.arch)},
      {"vocab_size", c.llm.vocab_size},
      {"hidden_size", c.llm.hidden_size},
      {"intermediate_size", c.llm.intermediate_size},
      {"num_hidden_layers", c.llm.num_hidden_layers},
      {"num_attention_heads", c.llm.num_attention_heads},
      {"num_key_value_heads", c.llm.num_key_value_heads},
      {"max_position_embeddings", c.llm.max_position_embeddings},
      {"rms_norm_eps", c.llm.rms_norm_eps},
      {"rope_theta", c.llm.rope_theta},
      {"hidden_act", c.llm.hidden_act},
      {"tie_word_embeddings", false},
  };
  if (c.llm.arch == LlmArch::kInternLM2) l["bias"] = c.llm.attention_bias;
  if (c.llm.arch == LlmArch::kLlama) l["attention_bias"] = c.llm.attention_bias;
  if (c.llm.rope_scaling)
    l["rope_scaling"] = {{"type", c.llm.rope_scaling->type}, {"factor", c.llm.rope_scaling->factor}};
  if (c.llm.bos_token_id) l["bos_token_id"] = *c.llm.bos_token_id;
  if (c.llm.pad_token_id) l["pad_token_id"] = *c.llm.pad_token_id;
  if (c.llm.eos_token_ids.size() == 1)
    l["eos_token_id"] = c.llm.eos_token_ids[0];
  else if (!c.llm.eos_token_ids.empty())
    l["eos_token_id"] = c.llm.eos_token_ids;
  json j = {
      {"architectures", {c.minimonkey ? "MiniMonkeyChatModel" : "InternVLChatModel"}},
      {"model_type", "internvl_chat"},
      {"vision_config", v},
      {"llm_config", l},
      {"select_layer", c.select_layer},
      {"downsample_ratio", c.downsample_ratio},
      {"template", c.template_name},
      {"dynamic_image_size", c.dynamic_image_size},
      {"use_thumbnail", c.use_thumbnail},
      {"ps_version", c.ps_version},
      {"min_dynamic_patch", c.min_dynamic_patch},
      {"max_dynamic_patch", c.max_dynamic_patch},
  };
  if (c.force_image_size) j["force_image_size"] = *c.force_image_size;
  if (c.system_message) j["system_message"] = *c.system_message;
  if (c.llm.awq) {
    j["quantization_config"] = {{"quant_method", "awq"},
                                {"bits", c.llm.awq->bits},
                                {"group_size", c.llm.awq->group_size},
                                {"zero_point", c.llm.awq->zero_point},
                                {"version", c.llm.awq->version}};
  }
  return j.dump(1);
}

}  // namespace internvl
