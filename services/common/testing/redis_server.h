// A real redis-server for tests, on a free loopback port, without
// persistence. Stop() kills it (to test the cache being down mid-run).
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "services/common/testing/harness.h"

namespace internvl::services::testing {

class RedisServer {
 public:
  // Starts `binary` (default /usr/bin/redis-server, or $INTERNVL_REDIS_SERVER)
  // and waits until it answers PING. Logs go to `log_dir`/redis-<port>.log.
  static absl::StatusOr<std::unique_ptr<RedisServer>> Start(const std::string& log_dir);
  ~RedisServer();

  int port() const { return port_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  // Kills the server (SIGKILL: no graceful close of client connections).
  void Stop();
  // SIGSTOP / SIGCONT: a hung Redis (connections accepted, nothing answered).
  void Pause();
  void Resume();
  // Stop(), then a fresh (empty) server on the same port: clients that
  // reconnect find it where the old one was.
  absl::Status Restart();
  // Runs one command (argv form) and returns the reply as text: the string
  // for bulk/status replies, the number for integers, "(nil)" for nil, an
  // error for error replies or a dead server.
  absl::StatusOr<std::string> Command(const std::vector<std::string>& argv) const;

 private:
  RedisServer(int port, std::string log_dir) : port_(port), log_dir_(std::move(log_dir)) {}
  // Starts redis-server on port_ and waits for PING.
  absl::Status SpawnAndWait();
  int port_;
  std::string log_dir_;
  std::unique_ptr<Subprocess> process_;
};

}  // namespace internvl::services::testing
