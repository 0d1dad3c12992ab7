// Multi-process test harness: real binaries on loopback ports, probed over
// real gRPC / HTTP. Used by the services' integration tests and benchmarks.
#pragma once

#include <sys/types.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace internvl::services::testing {

// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, read
// back, closed). Another process could take it in between; tests accept that
// small race in exchange for fixed ports in command lines.
absl::StatusOr<int> PickFreePort();

// A child process with stdout and stderr appended to a log file. The
// destructor kills (SIGKILL) and reaps it if it is still running.
class Subprocess {
 public:
  static absl::StatusOr<std::unique_ptr<Subprocess>> Spawn(const std::string& binary,
                                                           const std::vector<std::string>& args,
                                                           const std::string& log_path);
  ~Subprocess();

  pid_t pid() const { return pid_; }
  const std::string& log_path() const { return log_path_; }
  // The log file's content (for failure messages).
  std::string ReadLog() const;

  // Sends `signal` (no-op once reaped).
  void Signal(int signal);
  // Still running (not exited; reaps it if it has).
  bool Running();
  // Waits up to `timeout` for exit; returns the exit code, or 128 + signal
  // for a killed process. DEADLINE_EXCEEDED if it is still running.
  absl::StatusOr<int> Wait(absl::Duration timeout);

 private:
  Subprocess(pid_t pid, std::string log_path) : pid_(pid), log_path_(std::move(log_path)) {}

  pid_t pid_;
  std::string log_path_;
  std::optional<int> exit_code_;
};

// A server binary started on free loopback ports.
struct ServerProcess {
  std::unique_ptr<Subprocess> process;
  int port = 0;
  int metrics_port = 0;
  std::string target() const { return "127.0.0.1:" + std::to_string(port); }
};
// Spawns `binary args... --listen 127.0.0.1:P --metrics-port M` on ports
// that were free a moment ago, output appended to `log_path`.
absl::StatusOr<ServerProcess> SpawnServer(const std::string& binary, std::vector<std::string> args,
                                          const std::string& log_path);
// Kills `p`'s process if it runs (SIGKILL) and starts `binary args...` on
// the same ports: a replica coming back where clients expect it.
absl::Status RespawnServer(ServerProcess* p, const std::string& binary, std::vector<std::string> args,
                           const std::string& log_path);

// The resident set size of process `pid` (VmRSS of /proc/pid/status).
absl::StatusOr<int64_t> ResidentBytes(pid_t pid);

// grpc.health.v1 Check for `service` ("" = whole server) at `target`
// (host:port). Returns the ServingStatus name ("SERVING", "NOT_SERVING",
// ...) or the call's error status.
absl::StatusOr<std::string> HealthCheck(const std::string& target, const std::string& service,
                                        absl::Duration timeout = absl::Seconds(1));

// Polls HealthCheck until SERVING. Fails early (with the log) if `process`
// exits, and with DEADLINE_EXCEEDED after `timeout`.
absl::Status WaitForServing(const std::string& target, const std::string& service, Subprocess* process,
                            absl::Duration timeout);

// GET http://127.0.0.1:port/path; returns the body of a 200 response,
// otherwise an error naming the status line.
absl::StatusOr<std::string> HttpGet(int port, const std::string& path);

// The value of the series `series` (name plus labels exactly as rendered,
// e.g. `internvl_requests_total{code="OK",method="Encode",service="x"}`) in
// Prometheus text; nullopt when absent.
std::optional<double> MetricValue(const std::string& text, const std::string& series);

}  // namespace internvl::services::testing
