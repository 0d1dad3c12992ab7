// A small byte-level BPE tokenizer that make-model writes when no real
// tokenizer folder is given, so a random checkpoint runs end to end on a
// machine with nothing but this repository. It is a genuine Qwen2Tokenizer
// folder (vocab.json + merges.txt + tokenizer_config.json): the 256 GPT-2
// byte symbols (bytes_to_unicode order, as Qwen's ids 0..255), merges learnt
// deterministically from an embedded English text, then the added tokens
// <|endoftext|> <|im_start|> <|im_end|> and InternVL's nine
// (<img> </img> <IMG_CONTEXT> <quad> </quad> <ref> </ref> <box> </box>),
// which every chat template of the supported models needs.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace internvl::modelgen {

inline constexpr int kDefaultBpeMerges = 400;

struct ByteBpeInfo {
  int base_vocab = 0;     // 256 + merges
  int total_tokens = 0;   // len(tokenizer): base + added tokens
  int endoftext_id = 0;   // <|endoftext|>
  int im_end_id = 0;      // <|im_end|>
  std::vector<std::string> files;  // written, relative to the folder
};

// The merges learnt from the embedded text (at most `max_merges`; fewer when
// no pair occurs twice any more), as pairs of byte-level symbol strings.
std::vector<std::pair<std::string, std::string>> LearnByteBpeMerges(int max_merges);

// Writes the tokenizer files into `dir` (which must exist).
absl::StatusOr<ByteBpeInfo> WriteByteBpeTokenizer(const std::string& dir, int max_merges = kDefaultBpeMerges);

}  // namespace internvl::modelgen
