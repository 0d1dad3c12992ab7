// internvl-trainer: the Trainer gRPC service (fine-tuning jobs run as
// `internvl train` subprocesses). Flags live here only.
#include <fcntl.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <climits>
#include <cstring>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "core/train/trainer.h"
#include "services/common/flags.h"
#include "services/common/log.h"
#include "services/common/metrics.h"
#include "services/common/metrics_http.h"
#include "services/common/server.h"
#include "services/trainer/job_manager.h"
#include "services/trainer/paths.h"
#include "services/trainer/trainer_service.h"

ABSL_FLAG(std::string, listen, "0.0.0.0:50054", "gRPC address host:port (port 0 = any free port)");
ABSL_FLAG(int, metrics_port, 9093, "HTTP port for /metrics and /healthz (0 = any free port)");
ABSL_FLAG(std::string, state_dir, "/models/trainer/state",
          "job records, event logs and process logs (created if missing); must not lie inside a job's output");
ABSL_FLAG(std::string, output_root, "/models/trainer/out",
          "jobs write their output_dir (relative) under this folder (created if missing)");
ABSL_FLAG(std::string, model_root, "",
          "JobSpec.model may name a folder under this one (created if missing); empty = Hugging Face ids only "
          "(resolved through the HF cache, $HF_HOME)");
ABSL_FLAG(std::string, data_root, "/data",
          "JobSpec.meta (relative) and the datasets it lists must lie under this folder");
ABSL_FLAG(std::string, train_binary, "",
          "the `internvl` executable that runs jobs (`internvl train`); empty = `internvl` next to this binary (or "
          "the build tree's cli/internvl)");
ABSL_FLAG(int, max_concurrent_jobs, 1, "jobs running at once");
ABSL_FLAG(int, max_queued_jobs, 16, "jobs waiting for a slot before RESOURCE_EXHAUSTED");
ABSL_FLAG(int, max_nproc, 1, "largest JobSpec.nproc (data-parallel processes per job)");
ABSL_FLAG(double, cancel_grace_seconds, 30, "after SIGTERM to a job (cancel, shutdown), how long before SIGKILL");
ABSL_FLAG(std::string, auth_tokens_file, "",
          "file of bearer tokens (one per line) every call must carry; else $INTERNVL_AUTH_TOKENS (comma-separated)");
ABSL_FLAG(std::string, tls_cert_file, "", "PEM server certificate: serve TLS (empty = plaintext)");
ABSL_FLAG(std::string, tls_key_file, "", "PEM key of --tls_cert_file");
ABSL_FLAG(std::string, tls_client_ca_file, "", "PEM CA: require client certificates it signed (mTLS)");
ABSL_FLAG(double, grace_seconds, 20, "after SIGTERM, how long in-flight calls may finish");

namespace {

using namespace internvl::services;

std::string SelfDir() {
  char buffer[PATH_MAX];
  const ssize_t n = ::readlink("/proc/self/exe", buffer, sizeof(buffer) - 1);
  if (n <= 0) return ".";
  std::string path(buffer, static_cast<size_t>(n));
  return path.substr(0, path.rfind('/'));
}

bool Executable(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(path.c_str(), X_OK) == 0;
}

// The train binary from the flag, else next to this binary (an installed
// image: /usr/local/bin), else in the build tree (services/trainer/ ->
// cli/internvl). It must know the `train` command.
absl::StatusOr<std::string> FindTrainBinary(const std::string& flag) {
  std::string binary = flag;
  if (binary.empty()) {
    const std::string dir = SelfDir();
    for (const std::string& candidate : {dir + "/internvl", dir + "/../../cli/internvl"}) {
      if (Executable(candidate)) {
        binary = candidate;
        break;
      }
    }
    if (binary.empty())
      return absl::NotFoundError(
          absl::StrCat("no `internvl` next to ", dir, " or in the build tree: set --train-binary"));
  }
  if (!Executable(binary)) return absl::NotFoundError(absl::StrCat("--train-binary ", binary, " is not executable"));
  char real[PATH_MAX];
  if (::realpath(binary.c_str(), real) != nullptr) binary = real;
  // `internvl train --help` exits 0 only when the command exists.
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, "/dev/null", O_WRONLY, 0);
  std::string arg0 = binary, arg1 = "train", arg2 = "--help";
  char* argv[] = {arg0.data(), arg1.data(), arg2.data(), nullptr};
  pid_t pid = 0;
  const int rc = posix_spawn(&pid, binary.c_str(), &actions, nullptr, argv, environ);
  posix_spawn_file_actions_destroy(&actions);
  int status = 0;
  if (rc != 0 || ::waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
    return absl::FailedPreconditionError(absl::StrCat(binary, " has no `train` command (built without core/train?)"));
  return binary;
}

absl::StatusOr<std::string> EnsureDir(const std::string& dir, const char* flag) {
  if (!dir.empty()) {
    for (size_t i = 1; i <= dir.size(); ++i) {
      if (i == dir.size() || dir[i] == '/') ::mkdir(dir.substr(0, i).c_str(), 0755);
    }
  }
  return trainer::CanonicalDir(dir, flag);
}

}  // namespace

int main(int argc, char** argv) {
  BlockTerminationSignals();
  absl::SetProgramUsageMessage(
      "The InternVL trainer service: fine-tuning jobs (`internvl train` subprocesses) over gRPC.");
  NormalizedArgs args(argc, argv);
  absl::ParseCommandLine(args.argc(), args.argv());

  trainer::JobManagerOptions options;
  auto fail = [](const absl::Status& status) {
    LogError(status.ToString());
    return status.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
  };
  auto state_dir = EnsureDir(absl::GetFlag(FLAGS_state_dir), "state-dir");
  if (!state_dir.ok()) return fail(state_dir.status());
  auto output_root = EnsureDir(absl::GetFlag(FLAGS_output_root), "output-root");
  if (!output_root.ok()) return fail(output_root.status());
  auto data_root = EnsureDir(absl::GetFlag(FLAGS_data_root), "data-root");
  if (!data_root.ok()) return fail(data_root.status());
  options.roots.output_root = *output_root;
  options.roots.data_root = *data_root;
  options.roots.state_dir = *state_dir;
  if (!absl::GetFlag(FLAGS_model_root).empty()) {
    auto model_root = EnsureDir(absl::GetFlag(FLAGS_model_root), "model-root");
    if (!model_root.ok()) return fail(model_root.status());
    options.roots.model_root = *model_root;
  }
  if (trainer::IsWithin(options.roots.output_root, options.roots.state_dir))
    return fail(absl::InvalidArgumentError("--output-root must not lie inside --state-dir"));
  auto binary = FindTrainBinary(absl::GetFlag(FLAGS_train_binary));
  if (!binary.ok()) return fail(binary.status());
  options.train_binary = *binary;
  options.max_concurrent_jobs = absl::GetFlag(FLAGS_max_concurrent_jobs);
  options.max_queued_jobs = absl::GetFlag(FLAGS_max_queued_jobs);
  options.max_nproc = absl::GetFlag(FLAGS_max_nproc);
  options.cancel_grace = absl::Seconds(absl::GetFlag(FLAGS_cancel_grace_seconds));
  // Options, model config + template and the meta file are checked at
  // submit time (INVALID_ARGUMENT there rather than a FAILED job).
  options.validate = internvl::train::ValidateTrainInputs;

  MetricsRegistry registry;
  auto manager = trainer::JobManager::Create(options, &registry);
  if (!manager.ok()) return fail(manager.status());
  auto auth = BearerAuth::Load(absl::GetFlag(FLAGS_auth_tokens_file), "INTERNVL_AUTH_TOKENS");
  if (!auth.ok()) return fail(auth.status());
  trainer::TrainerService service(manager->get(), &registry, *std::move(auth));

  GrpcServerOptions grpc_options;
  grpc_options.listen = absl::GetFlag(FLAGS_listen);
  grpc_options.tls = {absl::GetFlag(FLAGS_tls_cert_file), absl::GetFlag(FLAGS_tls_key_file),
                      absl::GetFlag(FLAGS_tls_client_ca_file)};
  auto server = GrpcServer::Start(grpc_options, {&service}, {"internvl.v1.Trainer"});
  if (!server.ok()) return fail(server.status());
  GrpcServer* grpc_server = server->get();
  RunOptions run;
  run.grpc = grpc_options;
  auto metrics = MetricsHttpServer::Start(MetricsHost(run), absl::GetFlag(FLAGS_metrics_port), &registry,
                                          [grpc_server] { return grpc_server->serving(); });
  if (!metrics.ok()) return fail(metrics.status());
  LogInfo(absl::StrCat("serving internvl.v1.Trainer on port ", grpc_server->port(), ", metrics on port ",
                       (*metrics)->port(), "; jobs run ", options.train_binary, " train, output under ",
                       options.roots.output_root));
  const int sig = WaitForTerminationSignal();
  LogInfo(absl::StrCat("signal ", sig, ": stopping the running jobs, then shutting down"));
  // Jobs first (their watchers then receive the INTERRUPTED event), then the
  // server with its grace period.
  (*manager)->Shutdown(options.cancel_grace);
  grpc_server->Shutdown(absl::Seconds(absl::GetFlag(FLAGS_grace_seconds)));
  LogInfo("shut down cleanly");
  return 0;
}
