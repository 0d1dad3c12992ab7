#include "core/modelgen/model_specs.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"

namespace internvl::modelgen {
namespace {

// Numbers below come from the published HF configs of OpenGVLab/<model>
// (config.json: vision_config, llm_config and the InternVLChatConfig fields)
// and of the LLMs they wrap, as recalled and cross-checked where a public copy
// was found:
//  * InternViT-300M-448px(-V2_5): 24 layers, width 1024, 16 heads, MLP 4096,
//    layer_norm eps 1e-6, qkv_bias, no qk-norm. Cross-checked: the module dump
//    of InternVL3-1B (github shivangjhalani/multicoco InternVL3-1B_data.md:
//    qkv Linear(1024, 3072, bias=True), fc1 Linear(1024, 4096), LayerNorm eps
//    1e-6) and the InternVL2-8B vision_config quoted in
//    github InternVL2ForCausalLMTester ("hidden_size": 1024, drop_path 0.0).
//  * InternViT-6B-448px-V1-5 (InternVL2-26B/40B): 45 layers (V1-5 drops the
//    last 3 of InternViT-6B's 48), width 3200, 25 heads, MLP 12800, rms_norm,
//    qk_normalization, no qkv bias (docs/REFERENCE.md "6B style").
//  * Qwen2-0.5B-Instruct: hidden 896, intermediate 4864, 24 layers, 14 heads,
//    2 kv heads, rope_theta 1e6, max_position 32768, rms eps 1e-6; InternVL2-1B
//    resizes the vocabulary to 151655 (= len(tokenizer),
//    shared/tokenizers/README.md).
//  * Qwen2.5-0.5B-Instruct: same shapes; vocab 151674 (InternVL2_5-1B).
//  * Qwen2.5-3B-Instruct: hidden 2048, intermediate 11008, 36 layers, 16
//    heads, 2 kv heads; vocab 151674 (InternVL2_5-4B).
//  * internlm2-chat-1_8b / internlm2_5-1_8b-chat: hidden 2048, intermediate
//    8192, 24 layers, 16 heads, 8 kv heads; vocab 92553 (92544 pieces + 9
//    InternVL tokens), rope_theta 1e6, rope_scaling dynamic 2.0, max_position
//    32768, rms eps 1e-5, bias false (docs/REFERENCE.md "InternLM2 configs").
//  * internlm2_5-7b-chat: hidden 4096, intermediate 14336, 32 layers, 32
//    heads, 8 kv heads, vocab 92553. Cross-checked: the InternVL2-8B
//    llm_config quoted in github InternVL2ForCausalLMTester (bias false, bos 1,
//    eos 2, intermediate 14336, max_position 32768, vocab 92553).
//  * internlm2-chat-20b: hidden 6144, intermediate 16384, 48 layers, 48 heads,
//    8 kv heads, rope_scaling dynamic 3.0 (docs/REFERENCE.md).
//  * Nous-Hermes-2-Yi-34B: hidden 7168, intermediate 20480, 60 layers, 56
//    heads, 8 kv heads, rope_theta 5e6, max_position 4096, rms eps 1e-5, bos 1,
//    eos 7 (<|im_end|>). Cross-checked: the Yi-34B geometry table in a public
//    benchmark config (60 layers, 7168, 56/8 heads, 20480, vocab 64000). The
//    InternVL2-40B vocab is taken as 64000 + 9 InternVL tokens: NOT verified
//    against the hub file (docs/REFERENCE.md puts <IMG_CONTEXT> at 64000, so
//    at least 64001 rows are needed).
//  * InternVLChatConfig fields of every InternVL2/2.5 release: select_layer
//    -1, force_image_size 448, downsample_ratio 0.5, ps_version v2,
//    dynamic_image_size true, use_thumbnail true, min/max_dynamic_patch 1/12
//    (shared/fixtures tiny-* config.json, generated from the same layout).
//  * generation eos ids: the LLMs' generation_config.json (Qwen2/2.5-Instruct
//    [151645, 151643]; internlm2 chat [2, 92542] = </s>, <|im_end|>; Yi Hermes
//    7 = <|im_end|>), recalled, not re-checked.

constexpr int kImageSize = 448;
constexpr int kPatchSize = 14;
constexpr int kMaxDynamicPatch = 12;
constexpr double kDownsampleRatio = 0.5;
constexpr double kQwenRopeTheta = 1e6;
constexpr double kInternLM2RopeTheta = 1e6;
constexpr double kYiRopeTheta = 5e6;
constexpr int kQwenMaxPositions = 32768;
constexpr int kInternLM2MaxPositions = 32768;
constexpr int kYiMaxPositions = 4096;
constexpr int kQwen2VocabInternVL2 = 151655;
constexpr int kQwen25VocabInternVL25 = 151674;
constexpr int kInternLM2Vocab = 92553;
constexpr int kYiVocabInternVL2 = 64000 + 9;
// Qwen2 special ids (shared/tokenizers/README.md).
constexpr int kQwenEndOfText = 151643;
constexpr int kQwenImEnd = 151645;
// InternLM2: <s> 1, </s> 2, <|im_end|> 92542.
constexpr int kInternLM2Bos = 1;
constexpr int kInternLM2Eos = 2;
constexpr int kInternLM2ImEnd = 92542;
// Yi: <unk> 0, <|startoftext|> 1, <|im_end|> 7.
constexpr int kYiPad = 0;
constexpr int kYiBos = 1;
constexpr int kYiImEnd = 7;

VisionConfig InternViT300M() {
  VisionConfig v;
  v.num_channels = 3;
  v.patch_size = kPatchSize;
  v.image_size = kImageSize;
  v.qkv_bias = true;
  v.hidden_size = 1024;
  v.num_attention_heads = 16;
  v.intermediate_size = 4096;
  v.qk_normalization = false;
  v.num_hidden_layers = 24;
  v.hidden_act = "gelu";
  v.norm_type = VisionConfig::Norm::kLayerNorm;
  v.layer_norm_eps = 1e-6;
  v.drop_path_rate = 0.0;
  return v;
}

VisionConfig InternViT6BV15() {
  VisionConfig v = InternViT300M();
  v.qkv_bias = false;
  v.hidden_size = 3200;
  v.num_attention_heads = 25;
  v.intermediate_size = 12800;
  v.qk_normalization = true;
  v.num_hidden_layers = 45;
  v.norm_type = VisionConfig::Norm::kRmsNorm;
  return v;
}

LlmConfig Qwen2Like(int vocab, int hidden, int intermediate, int layers, int heads, int kv_heads) {
  LlmConfig c;
  c.arch = LlmArch::kQwen2;
  c.architecture = "Qwen2ForCausalLM";
  c.vocab_size = vocab;
  c.hidden_size = hidden;
  c.intermediate_size = intermediate;
  c.num_hidden_layers = layers;
  c.num_attention_heads = heads;
  c.num_key_value_heads = kv_heads;
  c.max_position_embeddings = kQwenMaxPositions;
  c.rms_norm_eps = 1e-6;
  c.rope_theta = kQwenRopeTheta;
  c.attention_bias = true;
  c.bos_token_id = kQwenEndOfText;
  c.eos_token_ids = {kQwenImEnd};
  return c;
}

LlmConfig InternLM2Like(int hidden, int intermediate, int layers, int heads, double rope_factor) {
  LlmConfig c;
  c.arch = LlmArch::kInternLM2;
  c.architecture = "InternLM2ForCausalLM";
  c.vocab_size = kInternLM2Vocab;
  c.hidden_size = hidden;
  c.intermediate_size = intermediate;
  c.num_hidden_layers = layers;
  c.num_attention_heads = heads;
  c.num_key_value_heads = 8;
  c.max_position_embeddings = kInternLM2MaxPositions;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = kInternLM2RopeTheta;
  c.rope_scaling = RopeScaling{"dynamic", rope_factor};
  c.attention_bias = false;
  c.bos_token_id = kInternLM2Bos;
  c.eos_token_ids = {kInternLM2Eos};
  c.pad_token_id = kInternLM2Eos;
  return c;
}

LlmConfig YiLike() {
  LlmConfig c;
  c.arch = LlmArch::kLlama;
  c.architecture = "LlamaForCausalLM";
  c.vocab_size = kYiVocabInternVL2;
  c.hidden_size = 7168;
  c.intermediate_size = 20480;
  c.num_hidden_layers = 60;
  c.num_attention_heads = 56;
  c.num_key_value_heads = 8;
  c.max_position_embeddings = kYiMaxPositions;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = kYiRopeTheta;
  c.attention_bias = false;
  c.bos_token_id = kYiBos;
  c.eos_token_ids = {kYiImEnd};
  c.pad_token_id = kYiPad;
  return c;
}

ModelSpec Make(std::string name, std::string vision_name, VisionConfig vision, std::string llm_name, LlmConfig llm,
               std::string template_name) {
  ModelSpec s;
  s.name = std::move(name);
  s.vision_name = std::move(vision_name);
  s.llm_name = std::move(llm_name);
  InternVLConfig& c = s.config;
  c.vision = std::move(vision);
  c.llm = std::move(llm);
  c.select_layer = -1;
  c.force_image_size = kImageSize;
  c.downsample_ratio = kDownsampleRatio;
  c.template_name = std::move(template_name);
  c.dynamic_image_size = true;
  c.use_thumbnail = true;
  c.ps_version = "v2";
  c.min_dynamic_patch = 1;
  c.max_dynamic_patch = kMaxDynamicPatch;
  switch (c.llm.arch) {
    case LlmArch::kQwen2:
      s.generation_eos_ids = {kQwenImEnd, kQwenEndOfText};
      s.generation_bos_id = kQwenEndOfText;
      s.generation_pad_id = kQwenEndOfText;
      break;
    case LlmArch::kInternLM2:
      s.generation_eos_ids = {kInternLM2Eos, kInternLM2ImEnd};
      s.generation_bos_id = kInternLM2Bos;
      s.generation_pad_id = kInternLM2Eos;
      break;
    case LlmArch::kLlama:
      s.generation_eos_ids = {kYiImEnd};
      s.generation_bos_id = kYiBos;
      s.generation_pad_id = kYiPad;
      break;
  }
  return s;
}

// MiniMonkey's spec from InternVL2-2B's: same shapes and config, its own
// name and model class. The real config.json could not be read
// (MINIMONKEY.md section 6); the tile ranges are not config fields.
ModelSpec MiniMonkey(ModelSpec s) {
  s.name = "MiniMonkey";
  s.config.minimonkey = true;
  return s;
}

const std::vector<ModelSpec>& Table() {
  static const auto* table = new std::vector<ModelSpec>{
      Make("InternVL2-1B", "InternViT-300M-448px", InternViT300M(), "Qwen2-0.5B-Instruct",
           Qwen2Like(kQwen2VocabInternVL2, 896, 4864, 24, 14, 2), "Hermes-2"),
      Make("InternVL2_5-1B", "InternViT-300M-448px-V2_5", InternViT300M(), "Qwen2.5-0.5B-Instruct",
           Qwen2Like(kQwen25VocabInternVL25, 896, 4864, 24, 14, 2), "internvl2_5"),
      Make("InternVL2-2B", "InternViT-300M-448px", InternViT300M(), "internlm2-chat-1_8b",
           InternLM2Like(2048, 8192, 24, 16, 2.0), "internlm2-chat"),
      // mx262/MiniMonkey: InternVL2-2B's weights and config under its own
      // model class (MINIMONKEY.md section 1).
      MiniMonkey(Make("InternVL2-2B", "InternViT-300M-448px", InternViT300M(), "internlm2-chat-1_8b",
                      InternLM2Like(2048, 8192, 24, 16, 2.0), "internlm2-chat")),
      Make("InternVL2_5-2B", "InternViT-300M-448px-V2_5", InternViT300M(), "internlm2_5-1_8b-chat",
           InternLM2Like(2048, 8192, 24, 16, 2.0), "internvl2_5"),
      Make("InternVL2_5-4B", "InternViT-300M-448px-V2_5", InternViT300M(), "Qwen2.5-3B-Instruct",
           Qwen2Like(kQwen25VocabInternVL25, 2048, 11008, 36, 16, 2), "internvl2_5"),
      Make("InternVL2-8B", "InternViT-300M-448px", InternViT300M(), "internlm2_5-7b-chat",
           InternLM2Like(4096, 14336, 32, 32, 2.0), "internlm2-chat"),
      Make("InternVL2-8B-MPO", "InternViT-300M-448px", InternViT300M(), "internlm2_5-7b-chat",
           InternLM2Like(4096, 14336, 32, 32, 2.0), "internlm2-chat"),
      Make("InternVL2_5-8B", "InternViT-300M-448px-V2_5", InternViT300M(), "internlm2_5-7b-chat",
           InternLM2Like(4096, 14336, 32, 32, 2.0), "internvl2_5"),
      Make("InternVL2-26B", "InternViT-6B-448px-V1-5", InternViT6BV15(), "internlm2-chat-20b",
           InternLM2Like(6144, 16384, 48, 48, 3.0), "internlm2-chat"),
      Make("InternVL2-40B", "InternViT-6B-448px-V1-5", InternViT6BV15(), "Nous-Hermes-2-Yi-34B", YiLike(), "Hermes-2"),
  };
  return *table;
}

}  // namespace

absl::StatusOr<ModelSpec> FindModelSpec(absl::string_view name) {
  if (!absl::ConsumePrefix(&name, "OpenGVLab/")) absl::ConsumePrefix(&name, "mx262/");
  for (const ModelSpec& s : Table()) {
    if (s.name == name) return s;
  }
  return absl::NotFoundError(
      absl::StrCat("unknown model '", name, "' (known: ", absl::StrJoin(ModelSpecNames(), ", "), ")"));
}

std::vector<std::string> ModelSpecNames() {
  std::vector<std::string> names;
  for (const ModelSpec& s : Table()) names.push_back(s.name);
  return names;
}

}  // namespace internvl::modelgen
