// Minimal service logging (Debian's Abseil 20220623 predates absl/log): one
// line per event on stderr, "I|W|E <UTC time> <message>", whole lines written
// atomically so concurrent calls do not interleave.
#pragma once

#include <chrono>
#include <string>

#include "absl/strings/string_view.h"

namespace internvl::services {

void LogInfo(absl::string_view message);
void LogWarning(absl::string_view message);
void LogError(absl::string_view message);

// Logs at most one line per `interval`; lines dropped in between are counted
// and reported on the next line that gets through ("(+N similar)"). For
// errors that can repeat on every request (e.g. the cache being down).
class RateLimitedLog {
 public:
  explicit RateLimitedLog(std::chrono::milliseconds interval) : interval_(interval) {}
  void Warning(absl::string_view message);

 private:
  const std::chrono::milliseconds interval_;
  std::chrono::steady_clock::time_point last_{};
  long suppressed_ = 0;
  bool logged_ = false;
};

// Aborts with a message when a programming invariant is broken (not for
// input errors: those are statuses).
[[noreturn]] void FatalError(absl::string_view message);

}  // namespace internvl::services
