// The KV-cache block pool's bookkeeping (no tensors): which of the pool's
// fixed-size blocks are free, which sequences reference which blocks, and
// which full blocks hold a known prefix (content-addressed, for prefix
// reuse). The tensors live in llm::PagedKVPool; this class only hands out
// block numbers.
//
// A block is in exactly one of three states:
//   free      - holds nothing useful; on the free list.
//   in use    - referenced by >= 1 sequence (ref_count > 0).
//   cached    - unreferenced but published under a prefix hash: reusable by
//               a later sequence with the same prefix, and evictable (least
//               recently released first) when a fresh block is needed.
// Published blocks are immutable: a sequence only writes into blocks it
// allocated fresh, and publishes them once full.
//
// Thread-compatible (the engine's step thread owns it).
#pragma once

#include <array>
#include <cstdint>
#include <list>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/types/span.h"

namespace internvl::engine {

// SHA-256 of a block's content and of everything before it (see
// Sequence::BlockHash in scheduler.h): equal hashes = equal prefixes.
using BlockHash = std::array<uint8_t, 32>;

// SHA-256(parent || tokens as little-endian int32 || extra). `parent` is
// null for the first block; `extra` is what else determines the block's KV
// (the digest of the image embedding rows at its positions), empty for text.
BlockHash HashBlock(const BlockHash* parent, absl::Span<const int32_t> tokens, const std::string& extra);

struct BlockManagerStats {
  int64_t num_blocks = 0;
  int64_t used = 0;         // referenced by a sequence
  int64_t cached_free = 0;  // unreferenced, holding a reusable prefix
  int64_t free = 0;         // unreferenced and empty
  int64_t evictions = 0;    // cached blocks reused for other content
};

class BlockManager {
 public:
  BlockManager(int64_t num_blocks, bool prefix_caching);

  int64_t num_blocks() const { return static_cast<int64_t>(ref_.size()); }
  bool prefix_caching() const { return prefix_caching_; }
  // Blocks a sequence could get now: free + cached-unreferenced (evictable).
  int64_t num_allocatable() const { return static_cast<int64_t>(free_.size() + lru_.size()); }

  // How many leading `hashes` are cached (in use or not). 0 without prefix
  // caching.
  int64_t MatchPrefix(absl::Span<const BlockHash> hashes) const;
  // Of the first `n` hashes (all cached), how many sit unreferenced: taking
  // them removes them from num_allocatable().
  int64_t CountUnreferenced(absl::Span<const BlockHash> hashes, int64_t n) const;
  // Takes a reference on the cached block holding `hash` (it must be
  // cached) and returns it.
  int32_t AcquireCached(const BlockHash& hash);
  // A fresh block with one reference: from the free list, else the least
  // recently released cached block (its prefix forgotten). nullopt when every
  // block is in use.
  std::optional<int32_t> Allocate();
  // Drops one reference. An unreferenced published block stays cached (most
  // recently released), an unpublished one becomes free.
  void Release(int32_t block);
  // Records that `block` (in use, full, written) holds the prefix `hash`.
  // When another block already holds it, nothing changes: this block stays
  // private and becomes free on release.
  void Publish(int32_t block, const BlockHash& hash);

  int ref_count(int32_t block) const { return ref_[block]; }
  bool is_published(int32_t block) const { return hash_of_[block].has_value(); }
  BlockManagerStats stats() const;

 private:
  void Evict(int32_t block);

  const bool prefix_caching_;
  std::vector<int> ref_;
  std::vector<std::optional<BlockHash>> hash_of_;
  std::vector<int32_t> free_;  // stack: the most recently freed is reused first
  std::list<int32_t> lru_;     // unreferenced published blocks, least recent first
  std::vector<std::list<int32_t>::iterator> lru_pos_;
  std::vector<bool> in_lru_;
  struct HashOf {
    size_t operator()(const BlockHash& h) const {
      size_t v;
      __builtin_memcpy(&v, h.data(), sizeof(v));
      return v;
    }
  };
  absl::flat_hash_map<BlockHash, int32_t, HashOf> cached_;  // hash -> block
  int64_t evictions_ = 0;
};

}  // namespace internvl::engine
