// Incremental detokenisation for streamed generation.
//
// Each Put(id) returns the text that the new token completes, never a broken
// UTF-8 sequence: when the trailing byte tokens (Qwen2 byte-level pieces,
// sentencepiece <0xAB> byte-fallback pieces) are a well-formed but
// unfinished character, their bytes are held back until a later token
// completes them (the reference's prefix decodes would show U+FFFD there
// instead). Flush() at the end releases what is still held (as Decode would
// render it, with U+FFFD for a character that never completed).
//
// Text is computed as the difference between decodes of a short window of
// recent tokens (the previous emission's tokens plus the new ones), so the
// decoder's context rules (sentencepiece's leading "▁", spaces around special
// tokens) apply as in a full Decode; the concatenation of all returned pieces
// equals Decode(all ids, skip_special_tokens) except where a rule rewrites
// text already emitted (InternLM2's clean-up of " ." into "." across two
// emissions), which a stream cannot take back.
#pragma once

#include <string>
#include <vector>

#include "absl/types/span.h"
#include "core/tokenizer/tokenizer.h"

namespace internvl::tokenizer {

class StreamingDetokenizer {
 public:
  // `tokenizer` must outlive this object. chat() decodes its answer with
  // skip_special_tokens=True, hence the default.
  explicit StreamingDetokenizer(const Tokenizer* tokenizer, bool skip_special_tokens = true);

  // Appends one generated id; returns the newly completed text (maybe "").
  std::string Put(int id);
  // Appends several ids; returns the concatenated new text.
  std::string Put(absl::Span<const int> ids);
  // Releases held-back text at the end of the stream.
  std::string Flush();

  const std::vector<int>& ids() const { return ids_; }

 private:
  std::string Emit(bool final);

  const Tokenizer* tokenizer_;
  bool skip_special_tokens_;
  std::vector<int> ids_;
  size_t prefix_offset_ = 0;  // start of the decode window
  size_t read_offset_ = 0;    // end of the tokens already turned into text
};

}  // namespace internvl::tokenizer
