// The trainer service's job lifecycle, independent of gRPC: a bounded queue of
// jobs, each run as an `internvl train` subprocess in its own process group
// (so a cancel reaches its data-parallel workers too), whose
// --events-jsonl file is tailed into the job's event log; job records
// persisted under the state directory.
//
//   <state-dir>/<job-id>/job.json      the Job message (state, times, spec,
//                                       checkpoints, last step) and the command,
//                                       rewritten atomically on every change
//   <state-dir>/<job-id>/events.jsonl  the training events (`internvl train
//                                       --events-jsonl`)
//   <state-dir>/<job-id>/train.log     the process's stdout and stderr
//
// A job's event log is, in order: STATE QUEUED, STATE RUNNING (once
// started), the training events, and one STATE event with the terminal state;
// it is rebuilt from these files after a restart, when jobs that were QUEUED
// or RUNNING become INTERRUPTED.
//
// One supervisor thread starts queued jobs, polls the running ones (new event
// lines, exit status) and enforces cancel deadlines. All state is guarded by
// one mutex; event sinks are called under it and must not block.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "internvl/v1/trainer.pb.h"
#include "services/common/metrics.h"
#include "services/trainer/job_spec.h"

namespace internvl::services::trainer {

struct JobManagerOptions {
  Roots roots;                                      // canonical directories (see job_spec.h)
  std::string train_binary;                         // the `internvl` executable
  int max_concurrent_jobs = 1;                      // running at once
  int max_queued_jobs = 16;                         // waiting beyond those (then RESOURCE_EXHAUSTED)
  int max_nproc = 1;                                // JobSpec.nproc limit
  absl::Duration cancel_grace = absl::Seconds(30);  // SIGTERM -> SIGKILL
  absl::Duration poll_interval = absl::Milliseconds(100);
  OptionsValidator validate;  // core/train's ValidateTrainOptions
};

// Receives a job's events in order (WatchJob). Called with the manager's lock
// held: must not block or call back into the manager.
class EventSink {
 public:
  virtual ~EventSink() = default;
  virtual void Send(const v1::JobEvent& event) = 0;
  // After the job's terminal event (or at once when it had already been
  // sent); the sink is then dropped by the manager.
  virtual void End() = 0;
};

bool IsTerminal(v1::JobState state);

class JobManager {
 public:
  // Creates the state directory if needed, loads the persisted jobs (marking
  // QUEUED / RUNNING ones INTERRUPTED) and starts the supervisor.
  static absl::StatusOr<std::unique_ptr<JobManager>> Create(const JobManagerOptions& options,
                                                            MetricsRegistry* registry);
  ~JobManager();  // Shutdown(cancel_grace) if not done

  // See trainer.proto for the errors.
  absl::StatusOr<std::string> Submit(const v1::JobSpec& spec);
  absl::StatusOr<v1::Job> Get(const std::string& id) const;
  absl::StatusOr<v1::Job> Cancel(const std::string& id);
  // Newest first; `states` empty = all.
  std::vector<v1::Job> List(const std::vector<v1::JobState>& states) const;

  // Sends the events of job `id` from `from_sequence` on to `sink`, then every
  // new one until the job ends. NOT_FOUND for an unknown id.
  absl::Status Watch(const std::string& id, int64_t from_sequence, std::shared_ptr<EventSink> sink);
  // Stops sending to `sink` (a watcher that went away).
  void Unwatch(const std::string& id, const EventSink* sink);

  // Refuses new jobs (UNAVAILABLE), interrupts queued ones, sends SIGTERM to
  // running ones and SIGKILL after `grace`, records them INTERRUPTED, and
  // stops the supervisor. Idempotent.
  void Shutdown(absl::Duration grace);

 private:
  using Clock = std::chrono::steady_clock;
  struct Job {
    v1::Job info;
    std::string dir;
    std::vector<std::string> argv;  // after the binary
    std::vector<v1::JobEvent> events;
    struct Watcher {
      std::shared_ptr<EventSink> sink;
      int64_t from_sequence;  // events before it are not sent
    };
    std::vector<Watcher> sinks;
    // While running.
    pid_t pid = -1;
    off_t events_offset = 0;
    std::string partial_line;
    bool saw_finished = false;
    std::string failure;  // the message of the last "failed" line
    std::optional<Clock::time_point> kill_at;
    Clock::time_point last_persist{};
  };

  JobManager(const JobManagerOptions& options, MetricsRegistry* registry);
  absl::Status LoadAll();
  void Loop();

  void StartLocked(Job* job);
  void PollLocked(Job* job);
  void ReadEventsLocked(Job* job);
  void HandleLineLocked(Job* job, const std::string& line);
  void ExitedLocked(Job* job, int wait_status);
  void SetStateLocked(Job* job, v1::JobState state, const std::string& message);
  void AppendEventLocked(Job* job, v1::JobEvent event);
  void PersistLocked(Job* job);
  void UpdateGaugesLocked();
  Job* FindLocked(const std::string& id) const;

  const JobManagerOptions options_;
  MetricsRegistry* const registry_;
  std::map<v1::JobState, Gauge*> state_gauges_;
  Gauge* queue_depth_;
  Counter* submitted_;
  Counter* steps_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, std::unique_ptr<Job>> jobs_;
  std::deque<std::string> queue_;  // QUEUED ids, oldest first
  int running_ = 0;
  bool stopping_ = false;
  absl::Duration stop_grace_;
  std::thread supervisor_;
};

}  // namespace internvl::services::trainer
