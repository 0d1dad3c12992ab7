#include "services/vision_encoder/in_memory_cache.h"

namespace internvl::services {

absl::StatusOr<std::optional<HostTensor>> InMemoryEmbeddingCache::Get(const std::string& key) {
  absl::MutexLock lock(&mu_);
  auto it = index_.find(key);
  if (it == index_.end()) return std::nullopt;
  lru_.splice(lru_.begin(), lru_, it->second);
  return it->second->value;
}

absl::Status InMemoryEmbeddingCache::Put(const std::string& key, const HostTensor& value) {
  const size_t size = value.bytes.size();
  absl::MutexLock lock(&mu_);
  if (auto it = index_.find(key); it != index_.end()) {
    bytes_ -= it->second->value.bytes.size();
    lru_.erase(it->second);
    index_.erase(it);
  }
  if (size > max_bytes_) return absl::OkStatus();
  while (bytes_ + size > max_bytes_ && !lru_.empty()) {
    bytes_ -= lru_.back().value.bytes.size();
    index_.erase(lru_.back().key);
    lru_.pop_back();
  }
  lru_.push_front(Entry{key, value});
  index_[key] = lru_.begin();
  bytes_ += size;
  return absl::OkStatus();
}

size_t InMemoryEmbeddingCache::bytes() const {
  absl::MutexLock lock(&mu_);
  return bytes_;
}

size_t InMemoryEmbeddingCache::entries() const {
  absl::MutexLock lock(&mu_);
  return lru_.size();
}

}  // namespace internvl::services
