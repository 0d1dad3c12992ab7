// Stop strings, as HF generate()'s `stop_strings` and OpenAI's `stop`:
// generation ends at the token whose text completes one of them (the match
// may begin in earlier tokens and the token may run past its end), and the
// text from the earliest match on is not part of the response. While
// streaming, a suffix that could still grow into a stop string is held back.
//
//   StopStrings stops(request_stops);
//   for each token: if (stops.Append(detok.Put(id))) -> stop (text() is cut);
//                   else emit text()[emitted, Safe())
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace internvl::tokenizer {

// Request limits: at most this many stop strings, each 1..kMaxStopBytes.
inline constexpr int kMaxStopStrings = 16;
inline constexpr int kMaxStopBytes = 256;

// INVALID_ARGUMENT for an empty stop string, one over kMaxStopBytes, or more
// than kMaxStopStrings.
// (Inline: the request validators of every layer use it.)
inline absl::Status ValidateStopStrings(const std::vector<std::string>& stops) {
  if (static_cast<int>(stops.size()) > kMaxStopStrings)
    return absl::InvalidArgumentError(absl::StrCat(stops.size(), " stop strings, over the limit of ", kMaxStopStrings));
  for (size_t i = 0; i < stops.size(); ++i) {
    if (stops[i].empty()) return absl::InvalidArgumentError(absl::StrCat("stop string ", i, " is empty"));
    if (static_cast<int>(stops[i].size()) > kMaxStopBytes)
      return absl::InvalidArgumentError(
          absl::StrCat("stop string ", i, " is ", stops[i].size(), " bytes, over the limit of ", kMaxStopBytes));
  }
  return absl::OkStatus();
}

class StopStrings {
 public:
  explicit StopStrings(std::vector<std::string> stops);

  bool empty() const { return stops_.empty(); }
  bool matched() const { return matched_; }

  // Appends the text of the next token(s). True when a stop string now ends
  // inside `piece` (or spans into it): text() is then cut where the earliest
  // such match begins, and further calls are ignored.
  bool Append(absl::string_view piece);

  // The generated text so far (cut at the match once matched).
  const std::string& text() const { return text_; }

  // How many bytes of text() can be shown now: all of it once matched;
  // otherwise all but the longest suffix that is a prefix of a stop string.
  size_t Safe() const;

 private:
  std::vector<std::string> stops_;
  std::string text_;
  bool matched_ = false;
};

}  // namespace internvl::tokenizer
