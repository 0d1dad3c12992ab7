#include "services/trainer/job_manager.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "core/files.h"
#include "core/status.h"
#include "google/protobuf/util/json_util.h"
#include "nlohmann/json.hpp"
#include "services/common/log.h"
#include "services/trainer/paths.h"

namespace internvl::services::trainer {
namespace {

constexpr char kJobFile[] = "job.json";
constexpr char kEventsFile[] = "events.jsonl";
constexpr char kLogFile[] = "train.log";
// How often a running job's record is rewritten for step events alone
// (state changes and checkpoints are written at once).
constexpr auto kStepPersistInterval = std::chrono::seconds(2);
// Lines of train.log quoted when a process fails without saying why.
constexpr int kLogTailLines = 8;

double UnixSeconds(absl::Time t) { return absl::ToDoubleSeconds(t - absl::UnixEpoch()); }
double NowSeconds() { return UnixSeconds(absl::Now()); }

const std::vector<v1::JobState>& AllStates() {
  static const auto* states =
      new std::vector<v1::JobState>{v1::JOB_STATE_QUEUED, v1::JOB_STATE_RUNNING,   v1::JOB_STATE_SUCCEEDED,
                                    v1::JOB_STATE_FAILED, v1::JOB_STATE_CANCELLED, v1::JOB_STATE_INTERRUPTED};
  return *states;
}

std::string StateLabel(v1::JobState state) {
  std::string name = v1::JobState_Name(state);
  if (absl::StartsWith(name, "JOB_STATE_")) name = name.substr(10);
  return absl::AsciiStrToLower(name);
}

std::string NewJobId() {
  static std::mt19937_64 rng{std::random_device{}()};
  return absl::StrCat("job-", absl::FormatTime("%Y%m%d-%H%M%S", absl::Now(), absl::UTCTimeZone()), "-",
                      absl::StrFormat("%06x", rng() & 0xffffff));
}

double JsonNumber(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number()) return std::numeric_limits<double>::quiet_NaN();  // null = NaN
  return it->get<double>();
}
int64_t JsonInt(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_number() ? it->get<int64_t>() : 0;
}
std::string JsonString(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : "";
}

// A line of `internvl train --events-jsonl` as a JobEvent; nullopt for the
// end lines ("failed", "cancelled"), returned through *end_kind instead.
std::optional<v1::JobEvent> ParseEventLine(const nlohmann::json& j, std::string* end_kind) {
  const std::string kind = JsonString(j, "kind");
  v1::JobEvent e;
  if (kind == "started") {
    e.set_kind(v1::JOB_EVENT_STARTED);
  } else if (kind == "step") {
    e.set_kind(v1::JOB_EVENT_STEP);
  } else if (kind == "checkpoint") {
    e.set_kind(v1::JOB_EVENT_CHECKPOINT);
  } else if (kind == "warning") {
    e.set_kind(v1::JOB_EVENT_WARNING);
  } else if (kind == "finished") {
    e.set_kind(v1::JOB_EVENT_FINISHED);
  } else {
    *end_kind = kind;
    return std::nullopt;
  }
  e.set_state(v1::JOB_STATE_RUNNING);
  e.set_time(JsonNumber(j, "time"));
  e.set_step(JsonInt(j, "step"));
  e.set_total_steps(JsonInt(j, "total_steps"));
  e.set_epoch(JsonNumber(j, "epoch"));
  e.set_loss(JsonNumber(j, "loss"));
  e.set_lr(JsonNumber(j, "lr"));
  e.set_grad_norm(JsonNumber(j, "grad_norm"));
  e.set_samples_per_second(JsonNumber(j, "samples_per_second"));
  e.set_skipped_records(JsonInt(j, "skipped_records"));
  e.set_checkpoint_path(JsonString(j, "checkpoint_path"));
  e.set_message(JsonString(j, "message"));
  return e;
}

std::string DescribeWaitStatus(int status) {
  if (WIFEXITED(status)) return absl::StrCat("exit code ", WEXITSTATUS(status));
  if (WIFSIGNALED(status))
    return absl::StrCat("killed by signal ", WTERMSIG(status), " (", strsignal(WTERMSIG(status)), ")");
  return "unknown exit status";
}

std::string LogTail(const std::string& path) {
  auto text = ReadFile(path, size_t{64} << 20);
  if (!text.ok()) return "";
  std::vector<std::string> lines = absl::StrSplit(*text, '\n', absl::SkipWhitespace());
  if (lines.size() > kLogTailLines) lines.erase(lines.begin(), lines.end() - kLogTailLines);
  return absl::StrJoin(lines, "\n");
}

// fork + exec of the trainer in its own process group (the cancel signal goes
// to the group: --nproc workers included), stdout/stderr to train.log, killed
// (SIGTERM: a graceful cancel) if the thread that started it dies.
absl::StatusOr<pid_t> SpawnTrainer(const std::string& binary, const std::vector<std::string>& args,
                                   const std::string& dir) {
  const std::string log_path = absl::StrCat(dir, "/", kLogFile);
  const int log_fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0) return absl::InternalError(absl::StrCat("cannot open ", log_path, ": ", std::strerror(errno)));
  const int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  std::vector<std::string> full = {binary, "train"};
  full.insert(full.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : full) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid == 0) {
    // Child: async-signal-safe calls only until exec.
    ::setpgid(0, 0);
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (::getppid() != parent) ::_exit(127);
    ::dup2(log_fd, STDOUT_FILENO);
    ::dup2(log_fd, STDERR_FILENO);
    if (null_fd >= 0) ::dup2(null_fd, STDIN_FILENO);
    if (::chdir(dir.c_str()) != 0) ::_exit(127);
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    ::sigaction(SIGPIPE, &dfl, nullptr);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);  // the service blocks SIGTERM/SIGINT
    ::execv(binary.c_str(), argv.data());
    const char msg[] = "internvl-trainer: exec of the train binary failed\n";
    [[maybe_unused]] ssize_t n = ::write(STDERR_FILENO, msg, sizeof(msg) - 1);
    ::_exit(127);
  }
  const int fork_errno = errno;
  ::close(log_fd);
  if (null_fd >= 0) ::close(null_fd);
  if (pid < 0) return absl::InternalError(absl::StrCat("fork: ", std::strerror(fork_errno)));
  ::setpgid(pid, pid);  // also here: no window where a kill(-pid) misses it
  return pid;
}

v1::JobEvent StateEvent(v1::JobState state, double time, const std::string& message) {
  v1::JobEvent e;
  e.set_kind(v1::JOB_EVENT_STATE);
  e.set_state(state);
  e.set_time(time);
  e.set_message(message);
  return e;
}

}  // namespace

bool IsTerminal(v1::JobState state) {
  return state == v1::JOB_STATE_SUCCEEDED || state == v1::JOB_STATE_FAILED || state == v1::JOB_STATE_CANCELLED ||
         state == v1::JOB_STATE_INTERRUPTED;
}

JobManager::JobManager(const JobManagerOptions& options, MetricsRegistry* registry)
    : options_(options), registry_(registry), stop_grace_(options.cancel_grace) {
  for (v1::JobState s : AllStates()) {
    state_gauges_[s] =
        registry_->GetGauge("internvl_trainer_jobs", "Jobs known to the trainer, by state", {{"state", StateLabel(s)}});
  }
  queue_depth_ = registry_->GetGauge("internvl_queue_depth", "Requests waiting for a worker", {{"service", "trainer"}});
  submitted_ = registry_->GetCounter("internvl_trainer_jobs_submitted_total", "Jobs accepted by SubmitJob");
  steps_ = registry_->GetCounter("internvl_trainer_steps_total", "Optimizer steps reported by running jobs");
}

absl::StatusOr<std::unique_ptr<JobManager>> JobManager::Create(const JobManagerOptions& options,
                                                               MetricsRegistry* registry) {
  if (options.max_concurrent_jobs < 1) return absl::InvalidArgumentError("--max-concurrent-jobs must be >= 1");
  if (options.max_queued_jobs < 0) return absl::InvalidArgumentError("--max-queued-jobs must be >= 0");
  if (options.max_nproc < 1) return absl::InvalidArgumentError("--max-nproc must be >= 1");
  std::unique_ptr<JobManager> manager(new JobManager(options, registry));
  {
    std::lock_guard<std::mutex> lock(manager->mu_);
    absl::Status loaded = manager->LoadAll();
    if (!loaded.ok()) return loaded;
    manager->UpdateGaugesLocked();
  }
  manager->supervisor_ = std::thread([m = manager.get()] { m->Loop(); });
  return manager;
}

JobManager::~JobManager() { Shutdown(options_.cancel_grace); }

absl::Status JobManager::LoadAll() {
  const std::string& root = options_.roots.state_dir;
  DIR* dir = ::opendir(root.c_str());
  if (dir == nullptr) return absl::FailedPreconditionError(absl::StrCat("cannot read --state-dir ", root));
  std::vector<std::string> names;
  while (dirent* entry = ::readdir(dir)) {
    if (entry->d_name[0] != '.') names.emplace_back(entry->d_name);
  }
  ::closedir(dir);
  for (const std::string& name : names) {
    const std::string job_dir = absl::StrCat(root, "/", name);
    auto text = ReadFile(absl::StrCat(job_dir, "/", kJobFile));
    if (!text.ok()) continue;  // not a job folder
    nlohmann::json j = nlohmann::json::parse(*text, nullptr, false);
    auto job = std::make_unique<Job>();
    job->dir = job_dir;
    if (j.is_discarded() || !j.contains("job") ||
        !google::protobuf::util::JsonStringToMessage(j["job"].dump(), &job->info).ok() || job->info.job_id() != name) {
      LogWarning(absl::StrCat("skipping ", job_dir, ": unreadable ", kJobFile));
      continue;
    }
    if (j.contains("argv") && j["argv"].is_array()) {
      for (const auto& a : j["argv"])
        if (a.is_string()) job->argv.push_back(a.get<std::string>());
    }
    // The event log: QUEUED, RUNNING, the training events, the end. The
    // checkpoints and the last step are rebuilt from the events.
    job->info.clear_checkpoints();
    job->info.clear_last_step();
    AppendEventLocked(job.get(), StateEvent(v1::JOB_STATE_QUEUED, job->info.created_time(), ""));
    if (job->info.started_time() > 0)
      AppendEventLocked(job.get(), StateEvent(v1::JOB_STATE_RUNNING, job->info.started_time(), ""));
    ReadEventsLocked(job.get());
    const v1::JobState was = job->info.state();
    if (!IsTerminal(was)) {
      job->info.set_state(v1::JOB_STATE_INTERRUPTED);
      job->info.set_ended_time(NowSeconds());
      job->info.set_message(absl::StrCat(
          "the trainer service stopped while the job was ", StateLabel(was),
          was == v1::JOB_STATE_RUNNING ? "; checkpoints written so far are kept: submit again with resume_from=auto"
                                       : ""));
      PersistLocked(job.get());
      LogInfo(absl::StrCat("job ", name, " was ", StateLabel(was), " when the service stopped: now interrupted"));
    }
    AppendEventLocked(job.get(), StateEvent(job->info.state(), job->info.ended_time(), job->info.message()));
    jobs_[name] = std::move(job);
  }
  if (!jobs_.empty()) LogInfo(absl::StrCat("loaded ", jobs_.size(), " jobs from ", root));
  return absl::OkStatus();
}

absl::StatusOr<std::string> JobManager::Submit(const v1::JobSpec& spec) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return absl::UnavailableError("the trainer service is shutting down");
  }
  // File checks outside the lock.
  INTERNVL_ASSIGN_OR_RETURN(ResolvedSpec resolved,
                            ResolveJobSpec(spec, options_.roots, options_.max_nproc, options_.validate));
  std::lock_guard<std::mutex> lock(mu_);
  if (stopping_) return absl::UnavailableError("the trainer service is shutting down");
  if (running_ + static_cast<int>(queue_.size()) >= options_.max_concurrent_jobs + options_.max_queued_jobs) {
    return BusyError(absl::StrCat(running_, " jobs running and ", queue_.size(),
                                  " waiting: the queue is full (--max-queued-jobs ", options_.max_queued_jobs, ")"));
  }
  for (const auto& [id, other] : jobs_) {
    if (IsTerminal(other->info.state())) continue;
    if (IsWithin(resolved.options.output_dir, other->info.output_path()) ||
        IsWithin(other->info.output_path(), resolved.options.output_dir)) {
      return absl::AlreadyExistsError(absl::StrCat("job ", id, " (", StateLabel(other->info.state()),
                                                   ") already writes to ", other->info.output_path()));
    }
  }
  std::string id = NewJobId();
  while (jobs_.count(id)) id = NewJobId();
  auto job = std::make_unique<Job>();
  job->dir = absl::StrCat(options_.roots.state_dir, "/", id);
  if (::mkdir(job->dir.c_str(), 0755) != 0)
    return absl::InternalError(absl::StrCat("cannot create ", job->dir, ": ", std::strerror(errno)));
  job->info.set_job_id(id);
  *job->info.mutable_spec() = spec;
  job->info.set_state(v1::JOB_STATE_QUEUED);
  job->info.set_created_time(NowSeconds());
  job->info.set_output_path(resolved.options.output_dir);
  // The job trains from the meta as it was checked (a later swap of the
  // file under --data-root cannot point it elsewhere).
  resolved.options.meta = absl::StrCat(job->dir, "/meta.json");
  if (absl::Status s = WriteFileAtomic(resolved.options.meta, resolved.meta_snapshot); !s.ok()) return s;
  job->argv = TrainCommandArgs(resolved, absl::StrCat(job->dir, "/", kEventsFile));
  Job* raw = job.get();
  jobs_[id] = std::move(job);
  AppendEventLocked(raw, StateEvent(v1::JOB_STATE_QUEUED, raw->info.created_time(), ""));
  PersistLocked(raw);
  queue_.push_back(id);
  submitted_->Increment();
  UpdateGaugesLocked();
  LogInfo(absl::StrCat("job ", id, " queued: ", resolved.options.model, " -> ", resolved.options.output_dir));
  cv_.notify_all();
  return id;
}

absl::StatusOr<v1::Job> JobManager::Get(const std::string& id) const {
  std::lock_guard<std::mutex> lock(mu_);
  Job* job = FindLocked(id);
  if (job == nullptr) return absl::NotFoundError(absl::StrCat("no job '", id, "'"));
  return job->info;
}

absl::StatusOr<v1::Job> JobManager::Cancel(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  Job* job = FindLocked(id);
  if (job == nullptr) return absl::NotFoundError(absl::StrCat("no job '", id, "'"));
  if (IsTerminal(job->info.state()) || job->info.cancel_requested()) return job->info;
  job->info.set_cancel_requested(true);
  if (job->info.state() == v1::JOB_STATE_QUEUED) {
    queue_.erase(std::remove(queue_.begin(), queue_.end(), id), queue_.end());
    SetStateLocked(job, v1::JOB_STATE_CANCELLED, "cancelled before it started");
  } else if (job->pid > 0) {
    ::kill(-job->pid, SIGTERM);
    job->kill_at = Clock::now() + absl::ToChronoNanoseconds(options_.cancel_grace);
    PersistLocked(job);
    LogInfo(absl::StrCat("job ", id, ": cancel requested (SIGTERM to process group ", job->pid, ")"));
  }
  return job->info;
}

std::vector<v1::Job> JobManager::List(const std::vector<v1::JobState>& states) const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<v1::Job> out;
  for (const auto& [id, job] : jobs_) {
    if (!states.empty() && std::find(states.begin(), states.end(), job->info.state()) == states.end()) continue;
    out.push_back(job->info);
  }
  std::sort(out.begin(), out.end(), [](const v1::Job& a, const v1::Job& b) {
    if (a.created_time() != b.created_time()) return a.created_time() > b.created_time();
    return a.job_id() > b.job_id();
  });
  return out;
}

absl::Status JobManager::Watch(const std::string& id, int64_t from_sequence, std::shared_ptr<EventSink> sink) {
  if (from_sequence < 0) return absl::InvalidArgumentError("from_sequence must be >= 0");
  std::lock_guard<std::mutex> lock(mu_);
  Job* job = FindLocked(id);
  if (job == nullptr) return absl::NotFoundError(absl::StrCat("no job '", id, "'"));
  for (size_t i = static_cast<size_t>(std::min<int64_t>(from_sequence, job->events.size())); i < job->events.size();
       ++i) {
    sink->Send(job->events[i]);
  }
  if (IsTerminal(job->info.state())) {
    sink->End();
  } else {
    job->sinks.push_back({std::move(sink), from_sequence});
  }
  return absl::OkStatus();
}

void JobManager::Unwatch(const std::string& id, const EventSink* sink) {
  std::lock_guard<std::mutex> lock(mu_);
  Job* job = FindLocked(id);
  if (job == nullptr) return;
  job->sinks.erase(std::remove_if(job->sinks.begin(), job->sinks.end(),
                                  [sink](const Job::Watcher& w) { return w.sink.get() == sink; }),
                   job->sinks.end());
}

void JobManager::Shutdown(absl::Duration grace) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!stopping_) {
      stopping_ = true;
      stop_grace_ = grace;
      for (const std::string& id : queue_) {
        SetStateLocked(jobs_[id].get(), v1::JOB_STATE_INTERRUPTED,
                       "the trainer service shut down before the job started");
      }
      queue_.clear();
      for (auto& [id, job] : jobs_) {
        if (job->pid > 0) {
          ::kill(-job->pid, SIGTERM);
          job->kill_at = Clock::now() + absl::ToChronoNanoseconds(grace);
          LogInfo(absl::StrCat("job ", id, ": stopping (service shutdown)"));
        }
      }
      UpdateGaugesLocked();
    }
  }
  cv_.notify_all();
  if (supervisor_.joinable()) supervisor_.join();
}

void JobManager::Loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    while (!stopping_ && running_ < options_.max_concurrent_jobs && !queue_.empty()) {
      Job* job = jobs_[queue_.front()].get();
      queue_.pop_front();
      StartLocked(job);
    }
    for (auto& [id, job] : jobs_) {
      if (job->pid > 0) PollLocked(job.get());
    }
    if (stopping_ && running_ == 0) break;
    cv_.wait_for(lock, absl::ToChronoNanoseconds(options_.poll_interval));
  }
}

void JobManager::StartLocked(Job* job) {
  auto pid = SpawnTrainer(options_.train_binary, job->argv, job->dir);
  if (!pid.ok()) {
    SetStateLocked(job, v1::JOB_STATE_FAILED, absl::StrCat("cannot start the trainer: ", pid.status().message()));
    return;
  }
  job->pid = *pid;
  ++running_;
  job->info.set_started_time(NowSeconds());
  LogInfo(absl::StrCat("job ", job->info.job_id(), " started: pid ", job->pid));
  SetStateLocked(job, v1::JOB_STATE_RUNNING, "");
}

void JobManager::PollLocked(Job* job) {
  ReadEventsLocked(job);
  int status = 0;
  const pid_t r = ::waitpid(job->pid, &status, WNOHANG);
  if (r == job->pid) {
    ReadEventsLocked(job);
    ExitedLocked(job, status);
    return;
  }
  if (job->kill_at && Clock::now() >= *job->kill_at) {
    LogWarning(absl::StrCat("job ", job->info.job_id(), ": still running after SIGTERM, sending SIGKILL"));
    ::kill(-job->pid, SIGKILL);
    job->kill_at.reset();
  }
  if (Clock::now() - job->last_persist > kStepPersistInterval) PersistLocked(job);
}

void JobManager::ReadEventsLocked(Job* job) {
  const std::string path = absl::StrCat(job->dir, "/", kEventsFile);
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;  // not written yet
  char buffer[1 << 16];
  while (true) {
    const ssize_t n = ::pread(fd, buffer, sizeof(buffer), job->events_offset);
    if (n <= 0) break;
    job->events_offset += n;
    job->partial_line.append(buffer, static_cast<size_t>(n));
    size_t start = 0;
    for (size_t nl; (nl = job->partial_line.find('\n', start)) != std::string::npos; start = nl + 1) {
      HandleLineLocked(job, job->partial_line.substr(start, nl - start));
    }
    job->partial_line.erase(0, start);
  }
  ::close(fd);
}

void JobManager::HandleLineLocked(Job* job, const std::string& line) {
  if (line.empty()) return;
  nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    LogWarning(absl::StrCat("job ", job->info.job_id(), ": unparsable event line: ", line.substr(0, 200)));
    return;
  }
  std::string end_kind;
  std::optional<v1::JobEvent> event = ParseEventLine(j, &end_kind);
  if (!event) {
    if (end_kind == "failed") job->failure = JsonString(j, "message");
    return;
  }
  bool persist_now = true;
  switch (event->kind()) {
    case v1::JOB_EVENT_STEP:
      *job->info.mutable_last_step() = *event;
      job->info.mutable_last_step()->set_job_id(job->info.job_id());
      if (job->pid > 0) steps_->Increment();
      persist_now = false;
      break;
    case v1::JOB_EVENT_CHECKPOINT:
      job->info.add_checkpoints(event->checkpoint_path());
      break;
    case v1::JOB_EVENT_FINISHED:
      job->saw_finished = true;
      if (!event->checkpoint_path().empty()) job->info.add_checkpoints(event->checkpoint_path());
      break;
    default:
      break;
  }
  job->info.set_skipped_records(std::max(job->info.skipped_records(), event->skipped_records()));
  AppendEventLocked(job, std::move(*event));
  if (persist_now && job->pid > 0) PersistLocked(job);
}

void JobManager::ExitedLocked(Job* job, int wait_status) {
  const std::string id = job->info.job_id();
  job->pid = -1;
  job->kill_at.reset();
  --running_;
  const bool exit_ok = WIFEXITED(wait_status) && WEXITSTATUS(wait_status) == 0;
  if (exit_ok && job->saw_finished) {
    SetStateLocked(job, v1::JOB_STATE_SUCCEEDED, "");
  } else if (job->info.cancel_requested()) {
    SetStateLocked(job, v1::JOB_STATE_CANCELLED, "cancelled");
  } else if (stopping_) {
    SetStateLocked(job, v1::JOB_STATE_INTERRUPTED,
                   "the trainer service shut down while the job ran; checkpoints written so far are kept: submit "
                   "again with resume_from=auto");
  } else {
    std::string why = job->failure;
    if (why.empty()) {
      why = exit_ok ? "the trainer exited without finishing" : "the trainer failed";
      const std::string tail = LogTail(absl::StrCat(job->dir, "/", kLogFile));
      if (!tail.empty()) absl::StrAppend(&why, "; last log lines:\n", tail);
    }
    SetStateLocked(job, v1::JOB_STATE_FAILED, absl::StrCat(DescribeWaitStatus(wait_status), ": ", why));
  }
  LogInfo(
      absl::StrCat("job ", id, " ended: ", StateLabel(job->info.state()), " (", DescribeWaitStatus(wait_status), ")"));
  cv_.notify_all();
}

void JobManager::SetStateLocked(Job* job, v1::JobState state, const std::string& message) {
  job->info.set_state(state);
  job->info.set_message(message);
  if (IsTerminal(state)) job->info.set_ended_time(NowSeconds());
  const double time = IsTerminal(state) ? job->info.ended_time() : NowSeconds();
  AppendEventLocked(job, StateEvent(state, time, message));
  PersistLocked(job);
  UpdateGaugesLocked();
  if (IsTerminal(state)) {
    for (auto& w : job->sinks) w.sink->End();
    job->sinks.clear();
  }
}

void JobManager::AppendEventLocked(Job* job, v1::JobEvent event) {
  event.set_job_id(job->info.job_id());
  event.set_sequence(static_cast<int64_t>(job->events.size()));
  job->events.push_back(std::move(event));
  const v1::JobEvent& added = job->events.back();
  for (auto& w : job->sinks) {
    if (added.sequence() >= w.from_sequence) w.sink->Send(added);
  }
}

void JobManager::PersistLocked(Job* job) {
  job->last_persist = Clock::now();
  std::string job_json;
  google::protobuf::util::JsonPrintOptions print;
  print.preserve_proto_field_names = true;
  if (!google::protobuf::util::MessageToJsonString(job->info, &job_json, print).ok()) {
    LogError(absl::StrCat("job ", job->info.job_id(), ": cannot serialise its record"));
    return;
  }
  nlohmann::ordered_json j;
  j["job"] = nlohmann::ordered_json::parse(job_json);
  j["argv"] = job->argv;
  j["train_binary"] = options_.train_binary;
  if (job->pid > 0) j["pid"] = job->pid;
  const absl::Status written = WriteFileAtomic(absl::StrCat(job->dir, "/", kJobFile),
                                               j.dump(1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n");
  if (!written.ok()) LogError(absl::StrCat("job ", job->info.job_id(), ": ", written.message()));
}

void JobManager::UpdateGaugesLocked() {
  std::map<v1::JobState, int> counts;
  for (const auto& [id, job] : jobs_) ++counts[job->info.state()];
  for (auto& [state, gauge] : state_gauges_) gauge->Set(counts[state]);
  queue_depth_->Set(static_cast<double>(queue_.size()));
}

JobManager::Job* JobManager::FindLocked(const std::string& id) const {
  auto it = jobs_.find(id);
  return it == jobs_.end() ? nullptr : it->second.get();
}

}  // namespace internvl::services::trainer
