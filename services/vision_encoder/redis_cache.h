// Embedding cache in Redis (hiredis, synchronous API), shared by all encoder
// replicas. Values are EncodeCacheValue blobs stored with SET .. EX ttl.
//
// Redis being down or slow must cost little: connects and commands have
// their own short timeouts, a broken connection is dropped and re-made on a
// later call, and a circuit breaker opens after `breaker_failures` failed or
// slow commands in a row: then the cache answers UNAVAILABLE at once (a miss
// for the Embedder) for `breaker_open_for`, and one trial command decides
// whether Redis is back. A dead or hung Redis costs a couple of requests one
// timeout each, the rest nothing.
#pragma once

#include <chrono>
#include <functional>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "services/common/circuit_breaker.h"
#include "services/vision_encoder/embedding_cache.h"

struct redisContext;

namespace internvl::services {

struct RedisCacheOptions {
  std::string host = "127.0.0.1";
  int port = 6379;
  absl::Duration connect_timeout = absl::Milliseconds(200);
  absl::Duration command_timeout = absl::Milliseconds(200);
  // Entries expire after this long (Redis EX); 0 = no expiry.
  absl::Duration ttl = absl::Hours(24);
  absl::Duration reconnect_backoff = absl::Seconds(1);
  // A command slower than this counts as a failure for the breaker.
  absl::Duration slow_command = absl::Milliseconds(100);
  int breaker_failures = 2;
  absl::Duration breaker_open_for = absl::Seconds(5);
  // Sent with AUTH on every new connection when non-empty (from a file or
  // the environment: services never take secrets as flag values).
  std::string password;
  // Idle connections kept for reuse (one per concurrent caller at most).
  int max_idle_connections = 4;
};

// Parses "host:port" or "redis://host:port" into options.host / options.port
// (UNIMPLEMENTED for rediss://: no TLS in Debian 12's hiredis).
absl::Status ParseRedisAddress(const std::string& address, RedisCacheOptions* options);

class RedisEmbeddingCache final : public EmbeddingCache {
 public:
  explicit RedisEmbeddingCache(RedisCacheOptions options)
      : options_(std::move(options)), breaker_(options_.breaker_failures, options_.breaker_open_for) {}
  ~RedisEmbeddingCache() override;

  // UNAVAILABLE / DEADLINE_EXCEEDED when Redis cannot answer; DATA_LOSS for
  // a value that does not decode (it is deleted, best effort).
  absl::StatusOr<std::optional<HostTensor>> Get(const std::string& key) override;
  absl::Status Put(const std::string& key, const HostTensor& value) override;
  const char* name() const override { return "redis"; }
  // Times the breaker opened.
  int64_t breaker_trips() const { return breaker_.trips(); }

 private:
  absl::StatusOr<redisContext*> Acquire();
  void Release(redisContext* c, bool healthy);
  template <typename T>
  T Guarded(const char* op, const std::function<T()>& call);
  absl::StatusOr<std::optional<HostTensor>> GetUnguarded(const std::string& key);
  absl::Status PutUnguarded(const std::string& key, const HostTensor& value);

  const RedisCacheOptions options_;
  CircuitBreaker breaker_;
  absl::Mutex mu_;
  std::vector<redisContext*> idle_ ABSL_GUARDED_BY(mu_);
  absl::Time retry_after_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
};

}  // namespace internvl::services
