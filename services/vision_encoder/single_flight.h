// Collapses concurrent computations of the same key into one: the first
// caller (the leader) runs the function; callers arriving while it runs wait
// and receive the leader's result. Once the leader finishes the key is
// forgotten, so later calls run again (caching is the caller's business).
//
// Waiters block their thread: call Do() from worker threads, never from gRPC
// callback threads. No deadlock is possible through the WorkQueue because a
// waiter only exists once its leader is already running.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <utility>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"

namespace internvl::services {

template <typename T>
class SingleFlight {
 public:
  struct Outcome {
    std::shared_ptr<const T> value;
    bool shared = false;  // true when another caller computed it
  };

  // `fn` returns T; it runs at most once per concurrent group of callers.
  template <typename Fn>
  Outcome Do(const std::string& key, Fn&& fn) {
    std::shared_ptr<Call> call;
    bool leader = false;
    {
      absl::MutexLock lock(&mu_);
      auto [it, inserted] = calls_.try_emplace(key);
      if (inserted) it->second = std::make_shared<Call>();
      call = it->second;
      leader = inserted;
    }
    if (!leader) {
      call->done.WaitForNotification();
      return Outcome{call->value, true};
    }
    call->value = std::make_shared<const T>(fn());
    {
      absl::MutexLock lock(&mu_);
      calls_.erase(key);
    }
    call->done.Notify();
    return Outcome{call->value, false};
  }

  // Keys being computed now (for tests and metrics).
  size_t in_flight() const {
    absl::MutexLock lock(&mu_);
    return calls_.size();
  }

 private:
  struct Call {
    absl::Notification done;
    std::shared_ptr<const T> value;
  };
  mutable absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<Call>> calls_ ABSL_GUARDED_BY(mu_);
};

}  // namespace internvl::services
