// A tiny HTTP/1.0-style server for Prometheus scraping and liveness probes,
// on its own port (so probes keep working while gRPC threads are busy):
//   GET /metrics  -> 200, text/plain; version=0.0.4, MetricsRegistry::Render()
//   GET /healthz  -> 200 "ok" while the health callback says so, else 503
//   anything else -> 404 (405 for non-GET)
// One background thread accepts; each connection is served on a thread of
// its own, at most kMaxConnections at once (more are answered 503 and
// closed), with short read and write timeouts: a slow or stuck client
// never stalls the next scrape or a probe.
#pragma once

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "services/common/metrics.h"

namespace internvl::services {

class MetricsHttpServer {
 public:
  // Binds `host:port` (port 0 = any free port) and starts serving.
  // `healthy` decides /healthz (null = always healthy).
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(const std::string& host, int port,
                                                                  const MetricsRegistry* registry,
                                                                  std::function<bool()> healthy = nullptr);
  ~MetricsHttpServer();  // stops the thread and closes the socket

  int port() const { return port_; }

  static constexpr int kMaxConnections = 8;

 private:
  MetricsHttpServer(int listen_fd, int wake_read, int wake_write, int port, const MetricsRegistry* registry,
                    std::function<bool()> healthy);
  void Serve();
  void HandleConnection(int fd);

  const int listen_fd_;
  const int wake_read_;  // a pipe: the destructor writes to wake poll()
  const int wake_write_;
  const int port_;
  const MetricsRegistry* registry_;
  std::function<bool()> healthy_;
  std::mutex mu_;
  std::condition_variable idle_;
  int active_ = 0;  // connection threads running (guarded by mu_)
  std::thread thread_;
};

}  // namespace internvl::services
