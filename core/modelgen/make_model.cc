#include "core/modelgen/make_model.h"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <thread>

#include "absl/strings/str_cat.h"
#include "core/files.h"
#include "core/modelgen/byte_bpe.h"
#include "core/modelgen/checkpoint_layout.h"
#include "core/modelgen/random_fill.h"
#include "core/status.h"
#include "nlohmann/json.hpp"

namespace internvl::modelgen {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// Every file an HF tokenizer folder of the supported models may hold.
constexpr const char* kTokenizerFiles[] = {"tokenizer_config.json",  "vocab.json",      "merges.txt",
                                           "tokenizer.json",         "tokenizer.model", "added_tokens.json",
                                           "special_tokens_map.json"};

absl::StatusOr<std::vector<std::string>> CopyTokenizer(const std::string& from, const std::string& to) {
  std::vector<std::string> copied;
  for (const char* name : kTokenizerFiles) {
    const fs::path src = fs::path(from) / name;
    std::error_code ec;
    if (!fs::exists(src, ec)) continue;
    fs::copy_file(src, fs::path(to) / name, fs::copy_options::overwrite_existing, ec);
    if (ec) return absl::InternalError(absl::StrCat("copying ", src.string(), ": ", ec.message()));
    copied.push_back(name);
  }
  if (copied.empty())
    return absl::NotFoundError(absl::StrCat("no tokenizer files in ", from,
                                            " (looked for tokenizer_config.json, vocab.json, merges.txt, "
                                            "tokenizer.json, tokenizer.model)"));
  return copied;
}

const char* TorchDtypeName(DType dtype) { return dtype == DType::kF32 ? "float32" : "bfloat16"; }

// InternVLConfigToJson plus the bookkeeping fields the hub configs carry
// (remote-code auto_map, torch_dtype, LoRA flags), so the folder looks like
// the real one to HF tooling too.
std::string ConfigJson(const InternVLConfig& config, const ModelSpec& spec, DType dtype) {
  json j = json::parse(InternVLConfigToJson(config));
  j["_name_or_path"] =
      absl::StrCat(config.minimonkey ? "mx262/" : "OpenGVLab/", spec.name, " (random weights, internvl make-model)");
  // MiniMonkey's remote code is its own model class over InternVL's config.
  const char* model_class =
      config.minimonkey ? "modeling_minimonkey_chat.MiniMonkeyChatModel" : "modeling_internvl_chat.InternVLChatModel";
  j["auto_map"] = {{"AutoConfig", "configuration_internvl_chat.InternVLChatConfig"},
                   {"AutoModel", model_class},
                   {"AutoModelForCausalLM", model_class}};
  j["torch_dtype"] = TorchDtypeName(dtype);
  j["use_backbone_lora"] = 0;
  j["use_llm_lora"] = 0;
  j["pad2square"] = false;
  j["llm_config"]["_name_or_path"] = spec.llm_name;
  j["llm_config"]["torch_dtype"] = TorchDtypeName(dtype);
  j["llm_config"]["use_cache"] = true;
  j["vision_config"]["_name_or_path"] = spec.vision_name;
  j["vision_config"]["torch_dtype"] = TorchDtypeName(dtype);
  return j.dump(1) + "\n";
}

}  // namespace

absl::StatusOr<InternVLConfig> MakeModelConfig(const MakeModelOptions& options) {
  INTERNVL_ASSIGN_OR_RETURN(ModelSpec spec, FindModelSpec(options.like));
  InternVLConfig c = spec.config;
  if (options.layers) {
    if (*options.layers <= 0) return absl::InvalidArgumentError("--layers must be positive");
    c.llm.num_hidden_layers = std::min(c.llm.num_hidden_layers, *options.layers);
    c.vision.num_hidden_layers = std::min(c.vision.num_hidden_layers, *options.layers);
  }
  if (options.vocab_size) {
    if (*options.vocab_size <= 0) return absl::InvalidArgumentError("vocab_size must be positive");
    c.llm.vocab_size = *options.vocab_size;
  }
  // Round-trip through the parser: the folder must load with the same rules.
  return ParseInternVLConfig(InternVLConfigToJson(c), "make-model config");
}

absl::StatusOr<MakeModelSummary> MakeModel(const MakeModelOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  if (options.out_dir.empty()) return absl::InvalidArgumentError("an output folder is required");
  if (options.dtype != DType::kBF16 && options.dtype != DType::kF32)
    return absl::InvalidArgumentError("dtype must be bf16 or fp32");
  INTERNVL_ASSIGN_OR_RETURN(ModelSpec spec, FindModelSpec(options.like));
  INTERNVL_ASSIGN_OR_RETURN(InternVLConfig config, MakeModelConfig(options));
  std::error_code ec;
  fs::create_directories(options.out_dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", options.out_dir, ": ", ec.message()));
  // A folder is complete once config.json exists: drop an old one first so an
  // interrupted rewrite is not mistaken for a complete folder.
  fs::remove(fs::path(options.out_dir) / "config.json", ec);

  MakeModelSummary summary;
  summary.like = spec.name;
  summary.out_dir = options.out_dir;

  // Tokenizer, and the special ids that go with it.
  json generation = json::object();
  std::optional<ByteBpeInfo> bpe_info;
  if (options.tokenizer_dir) {
    INTERNVL_ASSIGN_OR_RETURN(std::vector<std::string> copied, CopyTokenizer(*options.tokenizer_dir, options.out_dir));
    summary.files.insert(summary.files.end(), copied.begin(), copied.end());
    summary.tokenizer = absl::StrCat("copied from ", *options.tokenizer_dir);
    generation["eos_token_id"] = spec.generation_eos_ids;
    if (spec.generation_bos_id) generation["bos_token_id"] = *spec.generation_bos_id;
    if (spec.generation_pad_id) generation["pad_token_id"] = *spec.generation_pad_id;
  } else {
    INTERNVL_ASSIGN_OR_RETURN(bpe_info, WriteByteBpeTokenizer(options.out_dir));
    const ByteBpeInfo& bpe = *bpe_info;
    if (bpe.total_tokens > config.llm.vocab_size)
      return absl::InvalidArgumentError(absl::StrCat("the byte-level BPE tokenizer has ", bpe.total_tokens,
                                                     " tokens, more than the model's vocab_size ",
                                                     config.llm.vocab_size));
    summary.files.insert(summary.files.end(), bpe.files.begin(), bpe.files.end());
    summary.tokenizer = absl::StrCat("byte-level BPE (", bpe.total_tokens, " tokens)");
    // The real checkpoint's special ids name tokens this tokenizer does not
    // have at those ids: point config and generation config at its own.
    config.llm.bos_token_id.reset();
    config.llm.eos_token_ids = {bpe.im_end_id};
    config.llm.pad_token_id = bpe.endoftext_id;
    generation["eos_token_id"] = std::vector<int>{bpe.im_end_id, bpe.endoftext_id};
    generation["pad_token_id"] = bpe.endoftext_id;
  }

  // Weights.
  const std::vector<TensorSpec> specs = CheckpointTensors(config);
  // With the small built-in tokenizer, the LM head's rows past its last id are
  // written as zeros: random logits over the other ~150k rows would make
  // greedy decoding pick ids the tokenizer cannot spell, and the demo would
  // print nothing. Shapes and compute cost stay the real model's.
  int64_t head_live_elements = -1;  // elements of the head to randomise; -1 = all
  if (!options.tokenizer_dir) {
    const ByteBpeInfo& bpe = *bpe_info;
    head_live_elements = static_cast<int64_t>(bpe.total_tokens) * config.llm.hidden_size;
  }
  auto is_head = [](const std::string& name) {
    return name == "language_model.lm_head.weight" || name == "language_model.output.weight";
  };
  std::vector<PlannedTensor> planned;
  planned.reserve(specs.size());
  for (const TensorSpec& s : specs) {
    planned.push_back({s.name, options.dtype, s.shape});
    summary.params += s.numel();
  }
  const RandomFill random(options.seed);
  const int threads =
      options.threads > 0 ? options.threads : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  std::vector<uint64_t> keys;
  keys.reserve(specs.size());
  for (const TensorSpec& s : specs) keys.push_back(random.StreamKey(s.name));
  const FillFn fill = [&](size_t i, int64_t first, int64_t count, uint8_t* out) -> absl::Status {
    switch (specs[i].init) {
      case Init::kNormal: {
        int64_t live = count;
        if (head_live_elements >= 0 && is_head(specs[i].name))
          live = std::clamp<int64_t>(head_live_elements - first, 0, count);
        INTERNVL_RETURN_IF_ERROR(random.Normal(keys[i], kInitStd, options.dtype, first, live, out, threads));
        return RandomFill::Constant(0.0f, options.dtype, count - live, out + live * DTypeSize(options.dtype));
      }
      case Init::kOnes:
        return RandomFill::Constant(1.0f, options.dtype, count, out);
      case Init::kZeros:
        return RandomFill::Constant(0.0f, options.dtype, count, out);
      case Init::kLayerScale:
        return RandomFill::Constant(kLayerScaleInit, options.dtype, count, out);
    }
    return absl::InternalError("unknown init");
  };
  INTERNVL_ASSIGN_OR_RETURN(WrittenCheckpoint written,
                            WriteShardedSafetensors(options.out_dir, planned, fill, options.shards));
  summary.files.insert(summary.files.end(), written.files.begin(), written.files.end());
  summary.bytes += written.file_bytes;

  // generation_config.json, then config.json (the completion marker).
  generation["_from_model_config"] = true;
  generation["transformers_version"] = "4.37.2";
  const std::string generation_text = generation.dump(2) + "\n";
  INTERNVL_RETURN_IF_ERROR(
      WriteFileAtomic((fs::path(options.out_dir) / "generation_config.json").string(), generation_text));
  summary.files.push_back("generation_config.json");
  const std::string config_text = ConfigJson(config, spec, options.dtype);
  INTERNVL_RETURN_IF_ERROR(WriteFileAtomic((fs::path(options.out_dir) / "config.json").string(), config_text));
  summary.files.push_back("config.json");
  for (const std::string& f : summary.files) {
    if (f.find(".safetensors") != std::string::npos) continue;  // counted above
    summary.bytes += fs::file_size(fs::path(options.out_dir) / f, ec);
  }
  summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return summary;
}

std::string SummaryJson(const MakeModelSummary& s) {
  const nlohmann::ordered_json j = {{"like", s.like},          {"out", s.out_dir}, {"params", s.params},
                                    {"bytes", s.bytes},        {"files", s.files}, {"seconds", s.seconds},
                                    {"tokenizer", s.tokenizer}};
  return j.dump();
}

}  // namespace internvl::modelgen
