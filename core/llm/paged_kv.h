// Paged key/value storage for many sequences at once (the serving engine's
// KV cache): one pool of fixed-size blocks per layer, allocated once from a
// byte budget; a sequence owns a block table (engine/scheduler.h hands out
// block numbers) and position p of it lives in block table[p / block_size],
// slot p % block_size. Blocks whose content is a shared prefix are read by
// several sequences.
//
// Layout per layer: keys and values [num_blocks, kv_heads, block_size,
// head_dim] in the compute dtype, one block of one head a contiguous run of
// block_size rows. On the CPU the storage is KV-head-major ([kv_heads,
// num_blocks, ...], the tensors a permuted view of it: KVHeadMajor), so that
// one head's consecutive blocks are contiguous: decode attention streams them
// like the contiguous cache. Elsewhere the tensors are contiguous.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "core/config.h"

namespace internvl::llm {

// The pool's view [num_blocks, kv_heads, ...] of KV-head-major storage
// [kv_heads, num_blocks, block_size, head_dim].
at::Tensor KVHeadMajor(const at::Tensor& storage);

class PagedKVPool {
 public:
  // Bytes one block takes across all layers (keys and values); INT64_MAX
  // where that overflows (a config.json of absurd sizes), which no budget
  // holds and Create refuses.
  static int64_t BytesPerBlock(const LlmConfig& config, int block_size, at::ScalarType dtype);
  // `num_blocks` blocks of `block_size` positions on `device`.
  // INVALID_ARGUMENT for non-positive sizes; RESOURCE_EXHAUSTED when the
  // allocation fails.
  static absl::StatusOr<std::unique_ptr<PagedKVPool>> Create(const LlmConfig& config, int64_t num_blocks,
                                                             int block_size, at::ScalarType dtype,
                                                             c10::Device device = c10::Device(c10::kCPU));

  int64_t num_blocks() const { return num_blocks_; }
  int block_size() const { return block_size_; }
  int num_layers() const { return static_cast<int>(keys_.size()); }
  at::ScalarType dtype() const { return dtype_; }
  int64_t nbytes() const;

  // [num_blocks, kv_heads, block_size, head_dim].
  at::Tensor& key(int layer) { return keys_[layer]; }
  at::Tensor& value(int layer) { return values_[layer]; }

 private:
  PagedKVPool() = default;
  int64_t num_blocks_ = 0;
  int block_size_ = 0;
  at::ScalarType dtype_ = at::kFloat;
  std::vector<at::Tensor> keys_, values_;
};

// One sequence's part of a batched forward (CausalLM::ForwardPaged): it
// feeds `num_new` tokens at positions [start, start + num_new) (K/V of
// positions before `start` are already in its blocks), and attends causally
// over [0, start + num_new).
struct PagedSeq {
  int64_t start = 0;
  int64_t num_new = 0;
  std::vector<int32_t> blocks;  // block table covering start + num_new positions
  bool logits = false;          // return the logits of its last fed token
};

}  // namespace internvl::llm
