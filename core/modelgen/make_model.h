// `internvl make-model`: writes a random-weight InternVL checkpoint with the
// real architecture, config.json and tensor names/shapes of a published model
// (model_specs.h), for benchmarks and demos: its answers are noise, its cost
// (memory, FLOPs, load time) is the real model's.
//
// Folder layout (HF, as the hub repos): config.json, generation_config.json,
// model.safetensors or model-0000K-of-0000N.safetensors + index.json, and
// tokenizer files (copied from a real folder, or the project's byte-level BPE
// from byte_bpe.h). config.json is written LAST, so its presence marks a
// complete folder.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/config.h"
#include "core/modelgen/model_specs.h"
#include "core/modelgen/shard_writer.h"
#include "core/safetensors.h"

namespace internvl::modelgen {

struct MakeModelOptions {
  std::string like;     // a ModelSpecNames() entry
  std::string out_dir;
  uint64_t seed = 0;
  // A tokenizer folder to copy (tokenizer_config.json, vocab.json, merges.txt,
  // tokenizer.json, tokenizer.model, added_tokens.json,
  // special_tokens_map.json: whichever are present). Unset: byte-level BPE.
  std::optional<std::string> tokenizer_dir;
  DType dtype = DType::kBF16;  // kBF16 or kF32
  // Shrinks the model (tests, quick benchmarks): LLM and ViT layer counts are
  // capped at `layers`; `vocab_size` replaces the LLM vocabulary size (it must
  // still hold every token id of the tokenizer written).
  std::optional<int> layers;
  std::optional<int> vocab_size;
  ShardOptions shards;
  int threads = 0;  // 0 = hardware concurrency
};

struct MakeModelSummary {
  std::string like;
  std::string out_dir;
  int64_t params = 0;
  uint64_t bytes = 0;  // bytes written (weights with headers, configs, tokenizer)
  std::vector<std::string> files;
  double seconds = 0;
  std::string tokenizer;  // "copied from DIR" or "byte-level BPE (N tokens)"
};

// The config.json make-model writes for `options` (spec + overrides), before
// the tokenizer's ids are applied. Exposed for tests.
absl::StatusOr<InternVLConfig> MakeModelConfig(const MakeModelOptions& options);

absl::StatusOr<MakeModelSummary> MakeModel(const MakeModelOptions& options);

// {"like", "out", "params", "bytes", "files", "seconds", "tokenizer"} on one line.
std::string SummaryJson(const MakeModelSummary& summary);

}  // namespace internvl::modelgen
