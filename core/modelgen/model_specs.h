// The published InternVL2 / InternVL2.5 architectures that `internvl
// make-model --like NAME` reproduces: the real config.json (InternVLChatConfig
// with its vision_config and llm_config) and the LLM's generation eos ids.
// Sources for every number are cited beside the table in model_specs.cc.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/config.h"

namespace internvl::modelgen {

struct ModelSpec {
  std::string name;        // "InternVL2-1B"
  std::string vision_name;  // "InternViT-300M-448px"
  std::string llm_name;    // "Qwen2-0.5B-Instruct"
  InternVLConfig config;   // the real config.json, parsed
  // generation_config.json eos ids of the real checkpoint (ids of the REAL
  // tokenizer; meaningful only when the real tokenizer is copied).
  std::vector<int> generation_eos_ids;
  std::optional<int> generation_bos_id;
  std::optional<int> generation_pad_id;
};

// The spec of a published model, by its hub name (case-sensitive, with or
// without the "OpenGVLab/" prefix). NOT_FOUND lists the known names.
absl::StatusOr<ModelSpec> FindModelSpec(absl::string_view name);

// Every name FindModelSpec accepts, in table order.
std::vector<std::string> ModelSpecNames();

}  // namespace internvl::modelgen
