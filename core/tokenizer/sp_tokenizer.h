// Internal: sentencepiece-based tokenizers with the HF slow semantics of
// InternLM2Tokenizer (InternVL remote code) and LlamaTokenizer (legacy=True).
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "core/tokenizer/hf_tokenizer.h"

namespace internvl::tokenizer {

// `kind` is kInternLM2 or kLlama. Reads files.dir/tokenizer.model.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadSentencePiece(const HfTokenizerFiles& files,
                                                             Tokenizer::Kind kind);

}  // namespace internvl::tokenizer
