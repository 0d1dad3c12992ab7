// Internal: Qwen2Tokenizer (transformers 4.47 slow) = byte-level BPE.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "core/tokenizer/hf_tokenizer.h"

namespace internvl::tokenizer {

// Loads vocab.json + merges.txt from files.dir (tokenizer.json's model.vocab /
// model.merges when those are absent) and the added tokens of `files`.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadQwen2Bpe(const HfTokenizerFiles& files);

}  // namespace internvl::tokenizer
