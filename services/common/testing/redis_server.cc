#include "services/common/testing/redis_server.h"

#include <hiredis/hiredis.h>
#include <signal.h>

#include <cstdlib>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "core/status.h"

namespace internvl::services::testing {

namespace {

std::string RedisBinary() {
  const char* env = std::getenv("INTERNVL_REDIS_SERVER");
  return env != nullptr ? env : "/usr/bin/redis-server";
}

}  // namespace

absl::Status RedisServer::SpawnAndWait() {
  const std::string log = absl::StrCat(log_dir_, "/redis-", port_, ".log");
  INTERNVL_ASSIGN_OR_RETURN(process_, Subprocess::Spawn(RedisBinary(),
                                                        {"--port", std::to_string(port_), "--bind", "127.0.0.1",
                                                         "--save", "", "--appendonly", "no", "--protected-mode", "no"},
                                                        log));
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (absl::Now() < deadline && process_->Running()) {
    auto pong = Command({"PING"});
    if (pong.ok() && *pong == "PONG") return absl::OkStatus();
    absl::SleepFor(absl::Milliseconds(20));
  }
  return absl::UnavailableError(absl::StrCat("redis-server did not start; log:\n", process_->ReadLog()));
}

absl::StatusOr<std::unique_ptr<RedisServer>> RedisServer::Start(const std::string& log_dir) {
  absl::Status last = absl::UnknownError("not started");
  // A port picked free can be taken before redis binds it: retry a few times.
  for (int attempt = 0; attempt < 3; ++attempt) {
    INTERNVL_ASSIGN_OR_RETURN(const int port, PickFreePort());
    std::unique_ptr<RedisServer> server(new RedisServer(port, log_dir));
    last = server->SpawnAndWait();
    if (last.ok()) return server;
  }
  return last;
}

absl::Status RedisServer::Restart() {
  Stop();
  return SpawnAndWait();
}

RedisServer::~RedisServer() { Stop(); }

void RedisServer::Stop() {
  if (process_ != nullptr && process_->Running()) {
    process_->Signal(SIGKILL);
    (void)process_->Wait(absl::Seconds(5));
  }
}

void RedisServer::Pause() {
  if (process_ != nullptr) process_->Signal(SIGSTOP);
}

void RedisServer::Resume() {
  if (process_ != nullptr) process_->Signal(SIGCONT);
}

absl::StatusOr<std::string> RedisServer::Command(const std::vector<std::string>& argv) const {
  timeval tv{1, 0};
  redisContext* c = redisConnectWithTimeout("127.0.0.1", port_, tv);
  if (c == nullptr || c->err) {
    const std::string err = c ? c->errstr : "allocation failed";
    if (c) redisFree(c);
    return absl::UnavailableError(absl::StrCat("redis connect: ", err));
  }
  redisSetTimeout(c, tv);
  std::vector<const char*> args;
  std::vector<size_t> lens;
  for (const std::string& a : argv) {
    args.push_back(a.data());
    lens.push_back(a.size());
  }
  auto* reply = static_cast<redisReply*>(redisCommandArgv(c, static_cast<int>(args.size()), args.data(), lens.data()));
  absl::StatusOr<std::string> out = absl::UnavailableError(absl::StrCat("redis: ", c->errstr));
  if (reply != nullptr) {
    switch (reply->type) {
      case REDIS_REPLY_STRING:
      case REDIS_REPLY_STATUS:
        out = std::string(reply->str, reply->len);
        break;
      case REDIS_REPLY_INTEGER:
        out = std::to_string(reply->integer);
        break;
      case REDIS_REPLY_NIL:
        out = std::string("(nil)");
        break;
      case REDIS_REPLY_ERROR:
        out = absl::InternalError(std::string(reply->str, reply->len));
        break;
      default:
        out = absl::StrCat("(reply type ", reply->type, ")");
        break;
    }
    freeReplyObject(reply);
  }
  redisFree(c);
  return out;
}

}  // namespace internvl::services::testing
