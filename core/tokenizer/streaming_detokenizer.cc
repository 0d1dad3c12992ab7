#include "core/tokenizer/streaming_detokenizer.h"

#include <algorithm>

namespace internvl::tokenizer {

StreamingDetokenizer::StreamingDetokenizer(const Tokenizer* tokenizer, bool skip_special_tokens)
    : tokenizer_(tokenizer), skip_special_tokens_(skip_special_tokens) {}

std::string StreamingDetokenizer::Put(int id) {
  ids_.push_back(id);
  return Emit(/*final=*/false);
}

std::string StreamingDetokenizer::Put(absl::Span<const int> ids) {
  std::string out;
  for (int id : ids) out += Put(id);
  return out;
}

std::string StreamingDetokenizer::Flush() { return Emit(/*final=*/true); }

std::string StreamingDetokenizer::Emit(bool final) {
  if (read_offset_ == ids_.size()) return "";
  const absl::Span<const int> all(ids_);
  const absl::Span<const int> window = all.subspan(prefix_offset_);
  if (!final && tokenizer_->EndsWithIncompleteUtf8(window, skip_special_tokens_)) return "";
  const std::string prefix_text =
      tokenizer_->Decode(all.subspan(prefix_offset_, read_offset_ - prefix_offset_), skip_special_tokens_);
  const std::string new_text = tokenizer_->Decode(window, skip_special_tokens_);
  prefix_offset_ = read_offset_;
  read_offset_ = ids_.size();
  if (new_text.compare(0, prefix_text.size(), prefix_text) == 0) return new_text.substr(prefix_text.size());
  // The window's decode rewrote text that was already emitted: emit what
  // follows the common part.
  size_t common = 0;
  const size_t limit = std::min(prefix_text.size(), new_text.size());
  while (common < limit && prefix_text[common] == new_text[common]) ++common;
  while (common > 0 && (static_cast<unsigned char>(new_text[common]) & 0xC0) == 0x80) --common;
  return new_text.substr(common);
}

}  // namespace internvl::tokenizer
