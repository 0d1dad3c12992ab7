// `internvl make-model --like InternVL2-1B --out DIR`: a random-weight
// checkpoint with the real config.json, tensor names and shapes of a published
// InternVL2 / InternVL2.5 model (core/modelgen/make_model.h). Prints a
// one-line JSON summary.
#include <iostream>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "cli/args.h"
#include "cli/command.h"
#include "core/llm/awq_checkpoint.h"
#include "core/modelgen/make_model.h"
#include "core/modelgen/model_specs.h"
#include "core/status.h"

namespace internvl::cli {
namespace {

constexpr char kName[] = "make-model";
constexpr char kSummary[] = "write a random-weight checkpoint with a published model's real shapes and config";

const std::vector<FlagSpec>& Specs() {
  static const auto* specs = new std::vector<FlagSpec>{
      {"like", absl::StrCat("model to imitate: ", absl::StrJoin(modelgen::ModelSpecNames(), ", ")), true, false, ""},
      {"out", "output folder (created; config.json is written last and marks it complete)", true, false, ""},
      {"seed", "random seed", true, false, "0"},
      {"tokenizer", "tokenizer folder to copy (default: a built-in byte-level BPE tokenizer)", true, false, ""},
      {"dtype", "weight dtype: bf16 or fp32", true, false, "bf16"},
      {"layers", "cap the LLM and ViT layer counts (to shrink the model)", true, false, ""},
      {"vocab-size", "override the LLM vocabulary size (tests; must hold the tokenizer's ids)", true, false, ""},
      {"max-shard-bytes", "largest safetensors shard", true, false, "5000000000"},
      {"awq",
       "store the LLM's decoder layers as 4-bit AWQ (group 128), the layout of OpenGVLab's *-AWQ checkpoints "
       "(also: --like NAME-AWQ)",
       false, false, ""},
      {"help", "show this help", false, false, ""},
  };
  return *specs;
}

absl::StatusOr<modelgen::MakeModelOptions> ParseOptions(const Args& args, bool* awq) {
  modelgen::MakeModelOptions o;
  INTERNVL_ASSIGN_OR_RETURN(o.like, args.Require("like"));
  *awq = args.Has("awq");
  if (absl::EndsWith(o.like, "-AWQ")) {
    o.like.resize(o.like.size() - 4);
    *awq = true;
  }
  INTERNVL_ASSIGN_OR_RETURN(o.out_dir, args.Require("out"));
  if (auto seed = args.Get("seed")) {
    if (!absl::SimpleAtoi(*seed, &o.seed)) return absl::InvalidArgumentError(absl::StrCat("bad --seed '", *seed, "'"));
  }
  o.tokenizer_dir = args.Get("tokenizer");
  const std::string dtype = args.GetOr("dtype", "bf16");
  if (dtype == "bf16") {
    o.dtype = DType::kBF16;
  } else if (dtype == "fp32") {
    o.dtype = DType::kF32;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("--dtype must be bf16 or fp32, not '", dtype, "'"));
  }
  if (args.Has("layers")) {
    INTERNVL_ASSIGN_OR_RETURN(int layers, args.GetInt("layers", 0));
    o.layers = layers;
  }
  if (args.Has("vocab-size")) {
    INTERNVL_ASSIGN_OR_RETURN(int vocab, args.GetInt("vocab-size", 0));
    o.vocab_size = vocab;
  }
  if (auto shard = args.Get("max-shard-bytes")) {
    if (!absl::SimpleAtoi(*shard, &o.shards.max_shard_bytes) || o.shards.max_shard_bytes == 0)
      return absl::InvalidArgumentError(absl::StrCat("bad --max-shard-bytes '", *shard, "'"));
  }
  return o;
}

int Run(const std::vector<std::string>& argv) {
  int exit_code = 0;
  std::optional<Args> args = ParseCommandLine(kName, kSummary, Specs(), argv, &exit_code);
  if (!args) return exit_code;
  bool awq = false;
  auto options = ParseOptions(*args, &awq);
  if (!options.ok()) return ReportError(kName, options.status());
  auto summary = modelgen::MakeModel(*options);
  if (!summary.ok()) return ReportError(kName, summary.status());
  if (awq) {
    if (absl::Status s = llm::ConvertCheckpointToAwq(options->out_dir, 128); !s.ok()) return ReportError(kName, s);
  }
  std::cout << modelgen::SummaryJson(*summary) << "\n";
  return 0;
}

static const bool kRegistered = RegisterCommand({kName, kSummary, &Run});

}  // namespace
}  // namespace internvl::cli
