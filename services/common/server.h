// Bootstrap shared by every service binary: a gRPC server with message size
// limits, grpc.health.v1 (gRPC's default health service, with a status per
// service name), server reflection, and orderly shutdown on SIGTERM/SIGINT.
//
// main() of a service:
//   BlockTerminationSignals();               // first, before any thread
//   ... build the service objects ...
//   auto server = GrpcServer::Start(options, {&service}, {"internvl.v1.Foo"});
//   WaitForTerminationSignal();
//   (*server)->Shutdown(grace);              // stop accepting, drain, cancel
//   return 0;
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/impl/codegen/service_type.h"
#include "grpcpp/server.h"
#include "services/common/security.h"

namespace internvl::services {

struct GrpcServerOptions {
  // host:port to listen on; port 0 picks a free port (see GrpcServer::port).
  std::string listen = "0.0.0.0:50051";
  // Largest message received / sent. Tensors are chunked well below it; this
  // bounds encoded images and video slices in requests.
  int max_receive_message_bytes = 64 << 20;
  int max_send_message_bytes = 64 << 20;
  // TLS (and mTLS with a client CA); plaintext when no certificate.
  ServerTlsOptions tls;
};

// Plaintext options listening on `listen` (tests, tools).
inline GrpcServerOptions ListenOn(std::string listen) {
  GrpcServerOptions o;
  o.listen = std::move(listen);
  return o;
}

class GrpcServer {
 public:
  // Builds and starts the server. `health_names` are the fully qualified
  // service names reported SERVING by grpc.health.v1 (the overall "" status
  // is SERVING too). UNAVAILABLE when the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<GrpcServer>> Start(const GrpcServerOptions& options,
                                                           const std::vector<grpc::Service*>& services,
                                                           std::vector<std::string> health_names);
  ~GrpcServer();  // Shutdown(0) if not done yet

  // The bound port (useful with port 0).
  int port() const { return port_; }
  // Whether health checks say SERVING (false once shutdown began).
  bool serving() const;
  grpc::Server* server() { return server_.get(); }

  // Reports NOT_SERVING (so load balancers stop routing here) and keeps
  // serving: the first step of a drain.
  void StopServing();
  // Reports NOT_SERVING (so load balancers stop routing here), stops
  // accepting new calls, lets in-flight calls finish for up to `grace`, then
  // cancels the rest, and waits until every handler has returned.
  void Shutdown(absl::Duration grace);

 private:
  GrpcServer(std::unique_ptr<grpc::Server> server, int port, std::vector<std::string> health_names);

  std::unique_ptr<grpc::Server> server_;
  int port_;
  std::vector<std::string> health_names_;
  std::atomic<bool> serving_{true};
  bool health_shut_down_ = false;
  bool shut_down_ = false;
};

struct RunOptions {
  GrpcServerOptions grpc;
  // Prometheus / liveness HTTP endpoint (MetricsHttpServer); port 0 = any.
  // Empty host: the gRPC listen address's host (a server told to listen on
  // loopback does not open its metrics to the network).
  std::string metrics_host;
  int metrics_port = 9090;
  // How long in-flight calls may run on after SIGTERM before being cancelled
  // (keep it under Kubernetes' terminationGracePeriodSeconds).
  absl::Duration grace = absl::Seconds(20);
};

// The whole life of a service binary after its objects are built: starts the
// metrics endpoint and the gRPC server, logs the bound ports ("serving <name>
// on port N, metrics on port M"), waits for SIGTERM/SIGINT, shuts down with
// the grace period and returns the process exit code (0; 1 when a port cannot
// be bound). BlockTerminationSignals() must have been called first.
//
// The drain, when `registry` is given: health says NOT_SERVING, every
// service's RpcMetrics::Admit() refuses new calls (UNAVAILABLE), the calls in
// flight (internvl_in_flight_requests) finish within the grace, connections
// stay open a moment longer so clients read the last replies, and only then
// is the gRPC server shut down. gRPC's own Shutdown closes a connection as
// soon as its last call ends, which can cut off replies still being sent
// (clients then see UNAVAILABLE "Broken pipe" / "Connection reset by peer").
class MetricsRegistry;
// The metrics endpoint's host: RunOptions.metrics_host, else the gRPC listen
// address's IPv4 host (loopback names map to 127.0.0.1; names and IPv6 to
// every interface, as the gRPC server binds them).
std::string MetricsHost(const RunOptions& options);
int RunServer(const std::string& name, const RunOptions& options, const std::vector<grpc::Service*>& services,
              const std::vector<std::string>& health_names, MetricsRegistry* registry);

// Blocks SIGTERM and SIGINT in the calling thread and (by inheritance) in
// every thread it starts later; call first thing in main().
void BlockTerminationSignals();
// Waits for SIGTERM or SIGINT (blocked by BlockTerminationSignals) and
// returns its number.
int WaitForTerminationSignal();

}  // namespace internvl::services
