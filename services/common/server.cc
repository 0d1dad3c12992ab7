#include "services/common/server.h"

#include <algorithm>
#include <csignal>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "core/status.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"
#include "services/common/log.h"
#include "services/common/metrics.h"
#include "services/common/metrics_http.h"

namespace internvl::services {

absl::StatusOr<std::unique_ptr<GrpcServer>> GrpcServer::Start(const GrpcServerOptions& options,
                                                              const std::vector<grpc::Service*>& services,
                                                              std::vector<std::string> health_names) {
  // Both are process-wide switches read when a server is built.
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  INTERNVL_ASSIGN_OR_RETURN(std::shared_ptr<grpc::ServerCredentials> credentials, MakeServerCredentials(options.tls));
  builder.AddListeningPort(options.listen, credentials, &port);
  builder.SetMaxReceiveMessageSize(options.max_receive_message_bytes);
  builder.SetMaxSendMessageSize(options.max_send_message_bytes);
  // gRPC sets SO_REUSEPORT by default, which would let a second server (or a
  // stale replica) silently share the port: a busy port must be an error.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  for (grpc::Service* service : services) builder.RegisterService(service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", options.listen));
  }
  return std::unique_ptr<GrpcServer>(new GrpcServer(std::move(server), port, std::move(health_names)));
}

GrpcServer::GrpcServer(std::unique_ptr<grpc::Server> server, int port, std::vector<std::string> health_names)
    : server_(std::move(server)), port_(port), health_names_(std::move(health_names)) {
  grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService();
  health->SetServingStatus(true);
  for (const std::string& name : health_names_) health->SetServingStatus(name, true);
}

GrpcServer::~GrpcServer() {
  if (!shut_down_) Shutdown(absl::ZeroDuration());
}

bool GrpcServer::serving() const { return serving_.load(); }

void GrpcServer::StopServing() {
  serving_ = false;
  if (health_shut_down_) return;
  health_shut_down_ = true;
  // Sets every status NOT_SERVING and freezes them.
  server_->GetHealthCheckService()->Shutdown();
}

void GrpcServer::Shutdown(absl::Duration grace) {
  if (shut_down_) return;
  shut_down_ = true;
  StopServing();
  // Stops accepting at once; in-flight calls get until the deadline, then are
  // cancelled. Returns when every callback handler has completed.
  server_->Shutdown(absl::ToChronoTime(absl::Now() + grace));
  server_->Wait();
}

std::string MetricsHost(const RunOptions& options) {
  if (!options.metrics_host.empty()) return options.metrics_host;
  const std::string& listen = options.grpc.listen;
  std::string host = listen.substr(0, listen.rfind(':'));
  if (host == "localhost" || host == "[::1]") return "127.0.0.1";
  // IPv6 wildcards and names: every interface, as the gRPC server.
  if (host.empty() || host.front() == '[' || host.find_first_not_of("0123456789.") != std::string::npos)
    return "0.0.0.0";
  return host;
}

int RunServer(const std::string& name, const RunOptions& options, const std::vector<grpc::Service*>& services,
              const std::vector<std::string>& health_names, MetricsRegistry* registry) {
  auto server = GrpcServer::Start(options.grpc, services, health_names);
  if (!server.ok()) {
    LogError(absl::StrCat(name, ": ", server.status().message()));
    return 1;
  }
  GrpcServer* grpc_server = server->get();
  auto metrics = MetricsHttpServer::Start(MetricsHost(options), options.metrics_port, registry,
                                          [grpc_server] { return grpc_server->serving(); });
  if (!metrics.ok()) {
    LogError(absl::StrCat(name, ": ", metrics.status().message()));
    return 1;
  }
  LogInfo(absl::StrCat("serving ", name, " on port ", grpc_server->port(), ", metrics on port ", (*metrics)->port()));
  const int sig = WaitForTerminationSignal();
  LogInfo(absl::StrCat("signal ", sig, ": shutting down (grace ", absl::FormatDuration(options.grace), ")"));
  const absl::Time deadline = absl::Now() + options.grace;
  grpc_server->StopServing();
  if (registry != nullptr) {
    registry->StopAdmitting();
    constexpr char kInFlight[] = "internvl_in_flight_requests";
    while (registry->GaugeSum(kInFlight) > 0 && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(10));
    const double left = registry->GaugeSum(kInFlight);
    if (left > 0) LogInfo(absl::StrCat(left, " calls still in flight at the end of the grace: cancelling them"));
    // The last replies are written; let the clients read them before the
    // connections close.
    absl::SleepFor(std::min(absl::Milliseconds(500), deadline - absl::Now()));
  }
  grpc_server->Shutdown(std::max(absl::ZeroDuration(), deadline - absl::Now()));
  LogInfo("shut down cleanly");
  return 0;
}

void BlockTerminationSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

int WaitForTerminationSignal() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  int sig = 0;
  while (sigwait(&set, &sig) != 0) {
  }
  return sig;
}

}  // namespace internvl::services
