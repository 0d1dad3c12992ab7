#include "core/tokenizer/stop_strings.h"

#include <algorithm>
#include <utility>

#include "absl/strings/match.h"

namespace internvl::tokenizer {

StopStrings::StopStrings(std::vector<std::string> stops) : stops_(std::move(stops)) {
  stops_.erase(std::remove(stops_.begin(), stops_.end(), std::string()), stops_.end());
}

bool StopStrings::Append(absl::string_view piece) {
  if (matched_) return true;
  const size_t before = text_.size();
  text_.append(piece.data(), piece.size());
  if (piece.empty()) return false;
  size_t cut = std::string::npos;
  for (const std::string& stop : stops_) {
    // A new match ends after `before`: it starts at or after before - len + 1.
    const size_t from = before + 1 >= stop.size() ? before + 1 - stop.size() : 0;
    const size_t at = text_.find(stop, from);
    if (at != std::string::npos) cut = std::min(cut, at);
  }
  if (cut == std::string::npos) return false;
  text_.resize(cut);
  matched_ = true;
  return true;
}

size_t StopStrings::Safe() const {
  if (matched_) return text_.size();
  size_t hold = 0;
  const absl::string_view text(text_);
  for (const std::string& stop : stops_) {
    for (size_t k = std::min(stop.size() - 1, text.size()); k > hold; --k) {
      if (absl::EndsWith(text, absl::string_view(stop).substr(0, k))) {
        hold = k;
        break;
      }
    }
  }
  return text_.size() - hold;
}

}  // namespace internvl::tokenizer
