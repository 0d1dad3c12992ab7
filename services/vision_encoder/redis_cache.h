// Embedding cache in Redis (hiredis, synchronous API), shared by all encoder
// replicas. Values are EncodeCacheValue blobs stored with SET .. EX ttl.
//
// Redis being down or slow must cost little: connects and commands have
// their own short timeouts, a broken connection is dropped and re-made on a
// later call, and after a failed connect the cache answers UNAVAILABLE at
// once for `reconnect_backoff` instead of paying the connect timeout on every
// request.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
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
  // Idle connections kept for reuse (one per concurrent caller at most).
  int max_idle_connections = 4;
};

// Parses "host:port" into options.host / options.port.
absl::Status ParseRedisAddress(const std::string& address, RedisCacheOptions* options);

class RedisEmbeddingCache final : public EmbeddingCache {
 public:
  explicit RedisEmbeddingCache(RedisCacheOptions options) : options_(std::move(options)) {}
  ~RedisEmbeddingCache() override;

  // UNAVAILABLE / DEADLINE_EXCEEDED when Redis cannot answer; DATA_LOSS for
  // a value that does not decode (it is deleted, best effort).
  absl::StatusOr<std::optional<HostTensor>> Get(const std::string& key) override;
  absl::Status Put(const std::string& key, const HostTensor& value) override;
  const char* name() const override { return "redis"; }

 private:
  absl::StatusOr<redisContext*> Acquire();
  void Release(redisContext* c, bool healthy);

  const RedisCacheOptions options_;
  absl::Mutex mu_;
  std::vector<redisContext*> idle_ ABSL_GUARDED_BY(mu_);
  absl::Time retry_after_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
};

}  // namespace internvl::services
