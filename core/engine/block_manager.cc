#include "core/engine/block_manager.h"

#include <openssl/evp.h>

#include <cstring>

namespace internvl::engine {

BlockHash HashBlock(const BlockHash* parent, absl::Span<const int32_t> tokens, const std::string& extra) {
  std::string buf;
  buf.reserve(32 + tokens.size() * 4 + extra.size());
  if (parent != nullptr) buf.append(reinterpret_cast<const char*>(parent->data()), parent->size());
  for (int32_t t : tokens) {
    const uint32_t v = static_cast<uint32_t>(t);
    const char le[4] = {static_cast<char>(v & 0xff), static_cast<char>((v >> 8) & 0xff),
                        static_cast<char>((v >> 16) & 0xff), static_cast<char>(v >> 24)};
    buf.append(le, 4);
  }
  // The extra content is length-prefixed so that (tokens, extra) pairs
  // cannot alias across the boundary.
  const uint64_t n = extra.size();
  buf.append(reinterpret_cast<const char*>(&n), sizeof(n));
  buf.append(extra);
  BlockHash out{};
  unsigned int len = 0;
  EVP_Digest(buf.data(), buf.size(), out.data(), &len, EVP_sha256(), nullptr);
  return out;
}

BlockManager::BlockManager(int64_t num_blocks, bool prefix_caching)
    : prefix_caching_(prefix_caching),
      ref_(num_blocks, 0),
      hash_of_(num_blocks),
      lru_pos_(num_blocks),
      in_lru_(num_blocks, false) {
  free_.reserve(num_blocks);
  // Block 0 is handed out first.
  for (int64_t b = num_blocks - 1; b >= 0; --b) free_.push_back(static_cast<int32_t>(b));
}

int64_t BlockManager::MatchPrefix(absl::Span<const BlockHash> hashes) const {
  if (!prefix_caching_) return 0;
  int64_t n = 0;
  for (const BlockHash& h : hashes) {
    if (!cached_.contains(h)) break;
    ++n;
  }
  return n;
}

int64_t BlockManager::CountUnreferenced(absl::Span<const BlockHash> hashes, int64_t n) const {
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) {
    auto it = cached_.find(hashes[i]);
    if (it != cached_.end() && ref_[it->second] == 0) ++count;
  }
  return count;
}

int32_t BlockManager::AcquireCached(const BlockHash& hash) {
  const int32_t block = cached_.at(hash);
  if (ref_[block] == 0 && in_lru_[block]) {
    lru_.erase(lru_pos_[block]);
    in_lru_[block] = false;
  }
  ++ref_[block];
  return block;
}

void BlockManager::Evict(int32_t block) {
  lru_.erase(lru_pos_[block]);
  in_lru_[block] = false;
  cached_.erase(*hash_of_[block]);
  hash_of_[block].reset();
  ++evictions_;
}

std::optional<int32_t> BlockManager::Allocate() {
  int32_t block;
  if (!free_.empty()) {
    block = free_.back();
    free_.pop_back();
  } else if (!lru_.empty()) {
    block = lru_.front();
    Evict(block);
  } else {
    return std::nullopt;
  }
  ref_[block] = 1;
  return block;
}

void BlockManager::Release(int32_t block) {
  if (--ref_[block] > 0) return;
  if (hash_of_[block]) {
    lru_.push_back(block);
    lru_pos_[block] = std::prev(lru_.end());
    in_lru_[block] = true;
  } else {
    free_.push_back(block);
  }
}

void BlockManager::Publish(int32_t block, const BlockHash& hash) {
  if (!prefix_caching_ || hash_of_[block]) return;
  if (!cached_.emplace(hash, block).second) return;  // another block holds this prefix
  hash_of_[block] = hash;
}

BlockManagerStats BlockManager::stats() const {
  BlockManagerStats s;
  s.num_blocks = num_blocks();
  s.cached_free = static_cast<int64_t>(lru_.size());
  s.free = static_cast<int64_t>(free_.size());
  s.used = s.num_blocks - s.cached_free - s.free;
  s.evictions = evictions_;
  return s;
}

}  // namespace internvl::engine
