// A cap on the calls a server holds open at once (each may buffer an upload:
// embeddings, tiles, a video). A call takes a slot when it starts and gives
// it back when it ends; past the cap a new call is refused at once with
// RESOURCE_EXHAUSTED naming the flag (BusyError: a retry may pass), so idle
// or slow clients cannot pile up memory.
#pragma once

#include <atomic>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/status.h"

namespace internvl::services {

class StreamSlots {
 public:
  // `flag` names the limit in the refusal (e.g. "--max_concurrent_streams").
  StreamSlots(int max, std::string flag) : max_(max), flag_(std::move(flag)) {}

  // OK and one slot taken, or RESOURCE_EXHAUSTED (nothing taken).
  absl::Status Acquire() {
    int n = open_.load();
    do {
      if (n >= max_) return BusyError(absl::StrCat("the server has ", n, " calls open, its limit (", flag_, ")"));
    } while (!open_.compare_exchange_weak(n, n + 1));
    return absl::OkStatus();
  }
  void Release() { open_.fetch_sub(1); }
  int open() const { return open_.load(); }

 private:
  const int max_;
  const std::string flag_;
  std::atomic<int> open_{0};
};

}  // namespace internvl::services
