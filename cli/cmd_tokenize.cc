// `internvl tokenize`: the model folder's tokenizer on one text; prints the
// ids as a JSON list (tok(text)["input_ids"]), or with --tokens a JSON object
// {"ids": [...], "tokens": [...]}; --decode instead turns a JSON id list back
// into text (tok.decode).
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "cli/args.h"
#include "cli/command.h"
#include "core/status.h"
#include "core/tokenizer/tokenizer.h"
#include "nlohmann/json.hpp"

namespace internvl::cli {
namespace {

constexpr char kName[] = "tokenize";
constexpr char kSummary[] = "tokenize text (or decode ids) with a model folder's tokenizer";

const std::vector<FlagSpec>& Specs() {
  static const auto* specs = new std::vector<FlagSpec>{
      {"model", "model or tokenizer folder (tokenizer_config.json, vocab.json/merges.txt or "
                "tokenizer.model)", true, false, ""},
      {"text", "text to tokenize (UTF-8)", true, false, ""},
      {"decode", "JSON list of ids to decode instead of --text", true, false, ""},
      {"no-special", "do not add BOS/EOS (add_special_tokens=False)", false, false, ""},
      {"split-special", "treat special/added tokens in the text as plain text", false, false, ""},
      {"skip-special", "with --decode: drop special tokens (skip_special_tokens=True)", false, false, ""},
      {"tokens", "also print the token strings", false, false, ""},
      {"help", "show this help", false, false, ""},
  };
  return *specs;
}

absl::StatusOr<std::string> RunTokenize(const Args& args) {
  INTERNVL_ASSIGN_OR_RETURN(std::string model, args.Require("model"));
  INTERNVL_ASSIGN_OR_RETURN(auto tok, tokenizer::Tokenizer::Load(model));
  if (auto decode = args.Get("decode")) {
    const nlohmann::json ids = nlohmann::json::parse(*decode, nullptr, false);
    if (ids.is_discarded() || !ids.is_array()) {
      return absl::InvalidArgumentError("--decode must be a JSON list of integers");
    }
    std::vector<int> list;
    for (const auto& id : ids) {
      if (!id.is_number_integer()) return absl::InvalidArgumentError("--decode must be a JSON list of integers");
      list.push_back(id.get<int>());
    }
    return nlohmann::json(tok->Decode(list, args.Has("skip-special"))).dump();
  }
  INTERNVL_ASSIGN_OR_RETURN(std::string text, args.Require("text"));
  tokenizer::EncodeOptions options;
  options.add_special_tokens = !args.Has("no-special");
  if (args.Has("split-special")) options.split_special_tokens = true;
  INTERNVL_ASSIGN_OR_RETURN(std::vector<int> ids, tok->Encode(text, options));
  if (!args.Has("tokens")) return nlohmann::json(ids).dump();
  std::vector<std::string> tokens;
  for (int id : ids) tokens.push_back(tok->IdToToken(id).value_or(""));
  nlohmann::ordered_json out = {{"ids", ids}, {"tokens", tokens}};
  return out.dump();
}

int Run(const std::vector<std::string>& argv) {
  int exit_code = 0;
  std::optional<Args> args = ParseCommandLine(kName, kSummary, Specs(), argv, &exit_code);
  if (!args) return exit_code;
  auto out = RunTokenize(*args);
  if (!out.ok()) return ReportError(kName, out.status());
  std::cout << *out << "\n";
  return 0;
}

static const bool kRegistered = RegisterCommand({kName, kSummary, &Run});

}  // namespace
}  // namespace internvl::cli
