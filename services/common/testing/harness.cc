#include "services/common/testing/harness.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "core/net.h"
#include "core/status.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"

extern char** environ;

namespace internvl::services::testing {

absl::StatusOr<int> PickFreePort() { return PickFreeLoopbackPort(); }

absl::StatusOr<std::unique_ptr<Subprocess>> Subprocess::Spawn(const std::string& binary,
                                                              const std::vector<std::string>& args,
                                                              const std::string& log_path) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  // The child must not inherit a blocked SIGTERM (e.g. from a test that
  // embeds a server); reset the mask and default dispositions.
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t empty, defaults;
  sigemptyset(&empty);
  sigemptyset(&defaults);
  sigaddset(&defaults, SIGTERM);
  sigaddset(&defaults, SIGINT);
  sigaddset(&defaults, SIGPIPE);
  posix_spawnattr_setsigmask(&attr, &empty);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);

  std::vector<char*> argv;
  argv.push_back(const_cast<char*>(binary.c_str()));
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid = 0;
  const int rc = posix_spawn(&pid, binary.c_str(), &actions, &attr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) return absl::InternalError(absl::StrCat("spawn ", binary, ": ", std::strerror(rc)));
  return std::unique_ptr<Subprocess>(new Subprocess(pid, log_path));
}

Subprocess::~Subprocess() {
  if (!exit_code_.has_value()) {
    ::kill(pid_, SIGKILL);
    int status = 0;
    ::waitpid(pid_, &status, 0);
  }
}

std::string Subprocess::ReadLog() const {
  std::ifstream in(log_path_);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void Subprocess::Signal(int signal) {
  if (!exit_code_.has_value()) ::kill(pid_, signal);
}

namespace {
int ExitCode(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}
}  // namespace

bool Subprocess::Running() {
  if (exit_code_.has_value()) return false;
  int status = 0;
  if (::waitpid(pid_, &status, WNOHANG) == pid_) {
    exit_code_ = ExitCode(status);
    return false;
  }
  return true;
}

absl::StatusOr<int> Subprocess::Wait(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (Running()) {
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("process ", pid_, " still running after ", absl::FormatDuration(timeout)));
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
  return *exit_code_;
}

absl::StatusOr<std::string> HealthCheck(const std::string& target, const std::string& service, absl::Duration timeout) {
  auto channel = grpc::CreateChannel(target, grpc::InsecureChannelCredentials());
  auto stub = grpc::health::v1::Health::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  const grpc::Status status = stub->Check(&context, request, &response);
  if (!status.ok()) {
    return absl::UnavailableError(absl::StrCat("health check of ", target, ": ", status.error_message()));
  }
  return grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response.status());
}

absl::Status WaitForServing(const std::string& target, const std::string& service, Subprocess* process,
                            absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  std::string last = "no answer";
  while (absl::Now() < deadline) {
    if (process != nullptr && !process->Running()) {
      return absl::FailedPreconditionError(
          absl::StrCat("process exited before serving; its log:\n", process->ReadLog()));
    }
    auto status = HealthCheck(target, service, absl::Milliseconds(500));
    if (status.ok() && *status == "SERVING") return absl::OkStatus();
    last = status.ok() ? *status : status.status().ToString();
    absl::SleepFor(absl::Milliseconds(50));
  }
  return absl::DeadlineExceededError(absl::StrCat(target, " not SERVING after ", absl::FormatDuration(timeout),
                                                  " (last: ", last, ")",
                                                  process ? absl::StrCat("; log:\n", process->ReadLog()) : ""));
}

absl::StatusOr<std::string> HttpGet(int port, const std::string& path) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError("socket");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    const int err = errno;
    ::close(fd);
    return absl::UnavailableError(absl::StrCat("connect 127.0.0.1:", port, ": ", std::strerror(err)));
  }
  const std::string request = absl::StrCat("GET ", path, " HTTP/1.1\r\nHost: localhost\r\n\r\n");
  (void)!::send(fd, request.data(), request.size(), MSG_NOSIGNAL);
  std::string response;
  char buf[4096];
  ssize_t n;
  while ((n = ::recv(fd, buf, sizeof(buf), 0)) > 0) response.append(buf, static_cast<size_t>(n));
  ::close(fd);
  const size_t body = response.find("\r\n\r\n");
  const std::string status_line = response.substr(0, response.find("\r\n"));
  if (body == std::string::npos) return absl::UnavailableError(absl::StrCat("bad HTTP response: ", status_line));
  if (status_line.find(" 200 ") == std::string::npos) {
    return absl::UnavailableError(absl::StrCat("GET ", path, ": ", status_line));
  }
  return response.substr(body + 4);
}

std::optional<double> MetricValue(const std::string& text, const std::string& series) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (line.size() > series.size() && line.substr(0, series.size()) == series && line[series.size()] == ' ') {
      double v = 0;
      if (absl::SimpleAtod(line.substr(series.size() + 1), &v)) return v;
    }
  }
  return std::nullopt;
}

absl::StatusOr<ServerProcess> SpawnServer(const std::string& binary, std::vector<std::string> args,
                                          const std::string& log_path) {
  ServerProcess p;
  INTERNVL_ASSIGN_OR_RETURN(p.port, PickFreePort());
  INTERNVL_ASSIGN_OR_RETURN(p.metrics_port, PickFreePort());
  INTERNVL_RETURN_IF_ERROR(RespawnServer(&p, binary, std::move(args), log_path));
  return p;
}

absl::Status RespawnServer(ServerProcess* p, const std::string& binary, std::vector<std::string> args,
                           const std::string& log_path) {
  if (p->process != nullptr && p->process->Running()) {
    p->process->Signal(SIGKILL);
    (void)p->process->Wait(absl::Seconds(10));
  }
  args.insert(args.end(), {"--listen", p->target(), "--metrics-port", std::to_string(p->metrics_port)});
  INTERNVL_ASSIGN_OR_RETURN(p->process, Subprocess::Spawn(binary, args, log_path));
  return absl::OkStatus();
}

absl::StatusOr<int64_t> ResidentBytes(pid_t pid) {
  const std::string path = absl::StrCat("/proc/", pid, "/status");
  std::ifstream f(path);
  std::string line;
  while (std::getline(f, line)) {
    int64_t kib = 0;
    if (absl::StartsWith(line, "VmRSS:") &&
        absl::SimpleAtoi(absl::StripAsciiWhitespace(absl::StripSuffix(absl::StripPrefix(line, "VmRSS:"), "kB")), &kib))
      return kib * 1024;
  }
  return absl::NotFoundError(absl::StrCat("no VmRSS in ", path));
}

}  // namespace internvl::services::testing
