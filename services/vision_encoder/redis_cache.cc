#include "services/vision_encoder/redis_cache.h"

#include <hiredis/hiredis.h>

#include <cerrno>

#include "absl/strings/numbers.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace internvl::services {
namespace {

// A failed command: timeouts are DEADLINE_EXCEEDED, the rest UNAVAILABLE.
absl::Status CommandError(redisContext* c, absl::string_view op) {
  const std::string what = absl::StrCat("redis ", op, ": ", c->errstr[0] ? c->errstr : "no reply");
  if (c->err == REDIS_ERR_IO && (errno == EAGAIN || errno == EWOULDBLOCK)) return absl::DeadlineExceededError(what);
  return absl::UnavailableError(what);
}

}  // namespace

absl::Status ParseRedisAddress(const std::string& given, RedisCacheOptions* options) {
  if (absl::StartsWith(given, "rediss://"))
    return absl::UnimplementedError(
        "rediss:// (Redis over TLS) needs hiredis >= 1.0; Debian 12 ships 0.14 without TLS: terminate TLS in a "
        "sidecar (e.g. stunnel, see deploy/README.md) and point --redis at its local port");
  const std::string address = absl::StartsWith(given, "redis://") ? given.substr(8) : given;
  const size_t colon = address.rfind(':');
  int port = 0;
  if (colon == std::string::npos || colon == 0 || !absl::SimpleAtoi(address.substr(colon + 1), &port) || port <= 0 ||
      port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("redis address must be HOST:PORT, got '", address, "'"));
  }
  options->host = address.substr(0, colon);
  options->port = port;
  return absl::OkStatus();
}

RedisEmbeddingCache::~RedisEmbeddingCache() {
  absl::MutexLock lock(&mu_);
  for (redisContext* c : idle_) redisFree(c);
}

absl::StatusOr<redisContext*> RedisEmbeddingCache::Acquire() {
  {
    absl::MutexLock lock(&mu_);
    if (!idle_.empty()) {
      redisContext* c = idle_.back();
      idle_.pop_back();
      return c;
    }
    if (absl::Now() < retry_after_) {
      return absl::UnavailableError(
          absl::StrCat("redis ", options_.host, ":", options_.port, " unreachable (retrying after backoff)"));
    }
  }
  redisContext* c =
      redisConnectWithTimeout(options_.host.c_str(), options_.port, absl::ToTimeval(options_.connect_timeout));
  if (c == nullptr || c->err) {
    const std::string err = c != nullptr ? c->errstr : "out of memory";
    if (c != nullptr) redisFree(c);
    absl::MutexLock lock(&mu_);
    retry_after_ = absl::Now() + options_.reconnect_backoff;
    return absl::UnavailableError(absl::StrCat("redis connect ", options_.host, ":", options_.port, ": ", err));
  }
  redisSetTimeout(c, absl::ToTimeval(options_.command_timeout));
  if (!options_.password.empty()) {
    auto* reply = static_cast<redisReply*>(redisCommand(c, "AUTH %b", options_.password.data(), options_.password.size()));
    const bool ok = reply != nullptr && reply->type != REDIS_REPLY_ERROR;
    const std::string err = reply == nullptr ? std::string(c->errstr)
                            : reply->type == REDIS_REPLY_ERROR ? std::string(reply->str, reply->len)
                                                               : std::string();
    if (reply != nullptr) freeReplyObject(reply);
    if (!ok) {
      redisFree(c);
      return absl::UnavailableError(absl::StrCat("redis AUTH ", options_.host, ":", options_.port, ": ", err));
    }
  }
  return c;
}

void RedisEmbeddingCache::Release(redisContext* c, bool healthy) {
  if (healthy) {
    absl::MutexLock lock(&mu_);
    if (static_cast<int>(idle_.size()) < options_.max_idle_connections) {
      idle_.push_back(c);
      return;
    }
  }
  redisFree(c);
}

namespace {
absl::Status StatusOf(const absl::Status& s) { return s; }
template <typename T>
absl::Status StatusOf(const absl::StatusOr<T>& s) {
  return s.status();
}
}  // namespace

template <typename T>
T RedisEmbeddingCache::Guarded(const char* op, const std::function<T()>& call) {
  if (!breaker_.Allow()) {
    return absl::UnavailableError(absl::StrCat("redis ", options_.host, ":", options_.port, " ", op,
                                               " skipped: circuit open after failed or slow commands"));
  }
  const absl::Time start = absl::Now();
  T result = call();
  // A corrupt value is Redis answering: not a failure of the dependency.
  const absl::Status status = StatusOf(result);
  const bool ok =
      (status.ok() || status.code() == absl::StatusCode::kDataLoss) && absl::Now() - start <= options_.slow_command;
  breaker_.Record(ok);
  return result;
}

absl::StatusOr<std::optional<HostTensor>> RedisEmbeddingCache::Get(const std::string& key) {
  return Guarded<absl::StatusOr<std::optional<HostTensor>>>("GET", [&] { return GetUnguarded(key); });
}

absl::Status RedisEmbeddingCache::Put(const std::string& key, const HostTensor& value) {
  return Guarded<absl::Status>("SET", [&] { return PutUnguarded(key, value); });
}

absl::StatusOr<std::optional<HostTensor>> RedisEmbeddingCache::GetUnguarded(const std::string& key) {
  absl::StatusOr<redisContext*> conn = Acquire();
  if (!conn.ok()) return conn.status();
  redisContext* c = *conn;
  auto* reply = static_cast<redisReply*>(redisCommand(c, "GET %b", key.data(), key.size()));
  if (reply == nullptr) {
    absl::Status err = CommandError(c, "GET");
    Release(c, false);
    return err;
  }
  absl::StatusOr<std::optional<HostTensor>> out = std::optional<HostTensor>();
  bool corrupt = false;
  if (reply->type == REDIS_REPLY_STRING) {
    absl::StatusOr<HostTensor> value = DecodeCacheValue(absl::string_view(reply->str, reply->len));
    if (value.ok()) {
      out = std::optional<HostTensor>(std::move(*value));
    } else {
      out = value.status();
      corrupt = true;
    }
  } else if (reply->type == REDIS_REPLY_ERROR) {
    out = absl::UnavailableError(absl::StrCat("redis GET: ", std::string(reply->str, reply->len)));
  }
  freeReplyObject(reply);
  if (corrupt) {  // drop it so the next request re-encodes and stores a good one
    if (void* del = redisCommand(c, "DEL %b", key.data(), key.size())) freeReplyObject(del);
  }
  Release(c, c->err == 0);
  return out;
}

absl::Status RedisEmbeddingCache::PutUnguarded(const std::string& key, const HostTensor& value) {
  absl::StatusOr<redisContext*> conn = Acquire();
  if (!conn.ok()) return conn.status();
  redisContext* c = *conn;
  const std::string blob = EncodeCacheValue(value);
  const int64_t ttl_seconds = absl::ToInt64Seconds(options_.ttl);
  auto* reply = static_cast<redisReply*>(
      ttl_seconds > 0 ? redisCommand(c, "SET %b %b EX %lld", key.data(), key.size(), blob.data(), blob.size(),
                                     static_cast<long long>(ttl_seconds))
                      : redisCommand(c, "SET %b %b", key.data(), key.size(), blob.data(), blob.size()));
  if (reply == nullptr) {
    absl::Status err = CommandError(c, "SET");
    Release(c, false);
    return err;
  }
  absl::Status out = reply->type == REDIS_REPLY_ERROR
                         ? absl::UnavailableError(absl::StrCat("redis SET: ", std::string(reply->str, reply->len)))
                         : absl::OkStatus();
  freeReplyObject(reply);
  Release(c, c->err == 0);
  return out;
}

}  // namespace internvl::services
