// A per-process embedding cache: least-recently-used eviction by total bytes.
// For single-replica deployments and as the fallback when no Redis is given.
#pragma once

#include <list>
#include <string>
#include <unordered_map>

#include "absl/synchronization/mutex.h"
#include "services/vision_encoder/embedding_cache.h"

namespace internvl::services {

class InMemoryEmbeddingCache final : public EmbeddingCache {
 public:
  // Keeps entries while their bytes (tensor payloads) total <= max_bytes; an
  // entry larger than max_bytes on its own is not stored.
  explicit InMemoryEmbeddingCache(size_t max_bytes) : max_bytes_(max_bytes) {}

  absl::StatusOr<std::optional<HostTensor>> Get(const std::string& key) override;
  absl::Status Put(const std::string& key, const HostTensor& value) override;
  const char* name() const override { return "memory"; }

  size_t bytes() const;
  size_t entries() const;

 private:
  struct Entry {
    std::string key;
    HostTensor value;
  };
  const size_t max_bytes_;
  mutable absl::Mutex mu_;
  std::list<Entry> lru_ ABSL_GUARDED_BY(mu_);  // front = most recently used
  std::unordered_map<std::string, std::list<Entry>::iterator> index_ ABSL_GUARDED_BY(mu_);
  size_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace internvl::services
