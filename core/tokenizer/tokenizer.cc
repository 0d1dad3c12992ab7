#include "core/tokenizer/tokenizer.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "core/tokenizer/bpe_tokenizer.h"
#include "core/tokenizer/hf_tokenizer.h"
#include "core/tokenizer/sp_tokenizer.h"

namespace internvl::tokenizer {

const char* TokenizerKindName(Tokenizer::Kind kind) {
  switch (kind) {
    case Tokenizer::Kind::kQwen2Bpe:
      return "Qwen2 BPE";
    case Tokenizer::Kind::kInternLM2:
      return "InternLM2";
    case Tokenizer::Kind::kLlama:
      return "Llama";
  }
  return "?";
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::string& dir) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(dir)) {
    return absl::NotFoundError(absl::StrCat("tokenizer folder ", dir, " does not exist"));
  }
  INTERNVL_ASSIGN_OR_RETURN(HfTokenizerFiles files, ReadHfTokenizerFiles(dir));
  Kind kind;
  if (files.tokenizer_class) {
    // The class AutoTokenizer would instantiate (the *Fast variants are
    // loaded slow by the model cards: use_fast=False).
    const std::string& c = *files.tokenizer_class;
    if (c == "Qwen2Tokenizer" || c == "Qwen2TokenizerFast") {
      kind = Kind::kQwen2Bpe;
    } else if (c == "InternLM2Tokenizer" || c == "InternLM2TokenizerFast") {
      kind = Kind::kInternLM2;
    } else if (c == "LlamaTokenizer" || c == "LlamaTokenizerFast") {
      kind = Kind::kLlama;
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          dir, "/tokenizer_config.json: unsupported tokenizer_class \"", c,
          "\" (supported: Qwen2Tokenizer, InternLM2Tokenizer, LlamaTokenizer)"));
    }
  } else {
    // No config: what the files are. A BPE vocabulary means Qwen2 (the only
    // BPE family InternVL uses), a sentencepiece model means LlamaTokenizer.
    const bool bpe = (fs::exists(dir + "/vocab.json") && fs::exists(dir + "/merges.txt")) ||
                     fs::exists(dir + "/tokenizer.json");
    if (bpe) {
      kind = Kind::kQwen2Bpe;
    } else if (fs::exists(dir + "/tokenizer.model")) {
      kind = Kind::kLlama;
    } else {
      return absl::NotFoundError(absl::StrCat(
          "no tokenizer in ", dir,
          ": looked for tokenizer_config.json, vocab.json + merges.txt, tokenizer.json, "
          "tokenizer.model"));
    }
  }
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer =
      kind == Kind::kQwen2Bpe ? LoadQwen2Bpe(files) : LoadSentencePiece(files, kind);
  if (!tokenizer.ok()) return Annotate(tokenizer.status(), absl::StrCat("loading tokenizer from ", dir));
  return tokenizer;
}

}  // namespace internvl::tokenizer
