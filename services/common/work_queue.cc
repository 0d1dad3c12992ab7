#include "services/common/work_queue.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "core/status.h"

namespace internvl::services {

WorkQueue::WorkQueue(int threads, int max_queued, Gauge* depth, Gauge* busy)
    : max_queued_(max_queued), depth_(depth), busy_(busy) {
  for (int i = 0; i < std::max(1, threads); ++i) workers_.emplace_back([this] { Worker(); });
}

WorkQueue::~WorkQueue() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  for (std::thread& t : workers_) t.join();
}

absl::Status WorkQueue::Submit(std::function<void()> task) {
  absl::MutexLock lock(&mu_);
  if (stopping_) return absl::UnavailableError("server is shutting down");
  if (static_cast<int>(tasks_.size()) >= max_queued_) {
    return BusyError(absl::StrCat(tasks_.size(), " requests already queued (limit ", max_queued_, ")"));
  }
  tasks_.push_back(std::move(task));
  if (depth_ != nullptr) depth_->Set(static_cast<double>(tasks_.size()));
  return absl::OkStatus();
}

int WorkQueue::queued() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(tasks_.size());
}

void WorkQueue::Worker() {
  while (true) {
    std::function<void()> task;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](WorkQueue* q) ABSL_EXCLUSIVE_LOCKS_REQUIRED(q->mu_) { return q->stopping_ || !q->tasks_.empty(); },
          this));
      if (tasks_.empty()) return;  // stopping and drained
      task = std::move(tasks_.front());
      tasks_.pop_front();
      if (depth_ != nullptr) depth_->Set(static_cast<double>(tasks_.size()));
    }
    if (busy_ != nullptr) busy_->Add(1);
    task();
    if (busy_ != nullptr) busy_->Add(-1);
  }
}

}  // namespace internvl::services
