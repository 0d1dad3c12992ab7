// The compute queue of a service: gRPC callback handlers never run model
// work on gRPC threads (STYLE.md rule 4); they Submit() it here. A fixed set
// of worker threads runs tasks in FIFO order. The queue is bounded so that
// overload is refused early (RESOURCE_EXHAUSTED) instead of growing latency
// without limit, and its depth is exported as a gauge for autoscaling.
#pragma once

#include <deque>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "services/common/metrics.h"

namespace internvl::services {

class WorkQueue {
 public:
  // `threads` workers (>= 1); at most `max_queued` tasks waiting (not
  // counting running ones). `depth` (optional) tracks waiting tasks,
  // `busy` (optional) tracks running ones.
  WorkQueue(int threads, int max_queued, Gauge* depth = nullptr, Gauge* busy = nullptr);
  // Runs the tasks still queued, then joins the workers.
  ~WorkQueue();

  // Queues `task`. RESOURCE_EXHAUSTED (and `task` is dropped without running)
  // when max_queued tasks are already waiting; UNAVAILABLE after shutdown.
  absl::Status Submit(std::function<void()> task);

  int queued() const;

 private:
  void Worker();

  const int max_queued_;
  Gauge* const depth_;
  Gauge* const busy_;
  mutable absl::Mutex mu_;
  std::deque<std::function<void()>> tasks_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> workers_;
};

}  // namespace internvl::services
