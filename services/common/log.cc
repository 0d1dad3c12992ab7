#include "services/common/log.h"

#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace internvl::services {
namespace {

std::mutex& LogMutex() {
  static std::mutex mu;
  return mu;
}

void Write(char level, absl::string_view message) {
  const std::string line =
      absl::StrCat(std::string(1, level), " ",
                   absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone()), " ", message, "\n");
  std::lock_guard<std::mutex> lock(LogMutex());
  std::fwrite(line.data(), 1, line.size(), stderr);
  std::fflush(stderr);
}

}  // namespace

void LogInfo(absl::string_view message) { Write('I', message); }
void LogWarning(absl::string_view message) { Write('W', message); }
void LogError(absl::string_view message) { Write('E', message); }

void RateLimitedLog::Warning(absl::string_view message) {
  static std::mutex mu;
  long suppressed = 0;
  {
    std::lock_guard<std::mutex> lock(mu);
    const auto now = std::chrono::steady_clock::now();
    if (logged_ && now - last_ < interval_) {
      ++suppressed_;
      return;
    }
    logged_ = true;
    last_ = now;
    suppressed = suppressed_;
    suppressed_ = 0;
  }
  if (suppressed > 0) {
    LogWarning(absl::StrCat(message, " (+", suppressed, " similar)"));
  } else {
    LogWarning(message);
  }
}

void FatalError(absl::string_view message) {
  Write('F', message);
  std::abort();
}

}  // namespace internvl::services
