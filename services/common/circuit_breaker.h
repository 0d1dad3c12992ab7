// A circuit breaker for a dependency that may go slow or dead (Redis): after
// `failures_to_open` failures in a row it opens, and for `open_for` every
// call is refused at once (the caller treats that as a miss); then one trial
// call is let through (half-open): a success closes it, a failure opens it
// again. A slow dependency thus costs a few requests one timeout each, not
// every request. Thread-safe.
#pragma once

#include <cstdint>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace internvl::services {

class CircuitBreaker {
 public:
  CircuitBreaker(int failures_to_open, absl::Duration open_for)
      : failures_to_open_(failures_to_open < 1 ? 1 : failures_to_open), open_for_(open_for) {}

  // Whether a call may go to the dependency now.
  bool Allow() {
    absl::MutexLock lock(&mu_);
    if (failures_ < failures_to_open_) return true;
    if (trial_in_flight_ || absl::Now() < reopen_at_) return false;
    trial_in_flight_ = true;  // half-open: one trial at a time
    return true;
  }
  // The outcome of an allowed call.
  void Record(bool success) {
    absl::MutexLock lock(&mu_);
    trial_in_flight_ = false;
    if (success) {
      failures_ = 0;
      return;
    }
    if (++failures_ >= failures_to_open_) {
      if (failures_ == failures_to_open_) ++trips_;
      reopen_at_ = absl::Now() + open_for_;
    }
  }
  bool open() const {
    absl::MutexLock lock(&mu_);
    return failures_ >= failures_to_open_;
  }
  int64_t trips() const {
    absl::MutexLock lock(&mu_);
    return trips_;
  }

 private:
  const int failures_to_open_;
  const absl::Duration open_for_;
  mutable absl::Mutex mu_;
  int failures_ ABSL_GUARDED_BY(mu_) = 0;
  bool trial_in_flight_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time reopen_at_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  int64_t trips_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace internvl::services
