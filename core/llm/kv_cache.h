// Per-sequence (or per-batch) key/value cache of a decoder-only LLM.
//
// Storage is preallocated once to `max_len` positions: keys and values of
// layer l are [batch, num_key_value_heads, max_len, head_dim] tensors in the
// compute dtype, written in place as tokens arrive (prefill writes T slots,
// each decode step one). Nothing grows or is concatenated per token: on glibc
// every temporary over 32 MB is a fresh mmap whose pages the kernel zeroes, so
// HF-style torch.cat growth would cost a full cache copy per token.
//
// Besides K/V the cache keeps what HF generate keeps in `attention_mask`: which
// slots hold real tokens (left padding of batch_chat is 0) and, per row, how
// many real tokens precede the next slot, so that position ids follow
// batch_chat's `cumsum(mask) - 1` (see CausalLM::Forward).
//
// Thread-compatible: one sequence = one cache = one thread at a time.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "core/config.h"

namespace internvl::llm {

class KVCache {
 public:
  // Allocates the buffers (uninitialised: only written slots are ever read).
  // INVALID_ARGUMENT for non-positive sizes.
  static absl::StatusOr<std::unique_ptr<KVCache>> Create(const LlmConfig& config, int64_t batch,
                                                         int64_t max_len, at::ScalarType dtype);

  int64_t batch() const { return batch_; }
  int64_t max_len() const { return max_len_; }
  // Slots filled so far (prompt incl. padding + decoded tokens).
  int64_t length() const { return length_; }
  int64_t remaining() const { return max_len_ - length_; }
  int num_layers() const { return static_cast<int>(keys_.size()); }
  at::ScalarType dtype() const { return dtype_; }
  // Bytes held by the K/V buffers.
  int64_t nbytes() const;

  // Forgets the contents; keeps the buffers for the next sequence.
  void Reset();

  // --- Used by CausalLM::Forward. ---
  // [B, kv_heads, max_len, head_dim]; valid slots are [0, length()).
  at::Tensor& key(int layer) { return keys_[layer]; }
  at::Tensor& value(int layer) { return values_[layer]; }
  // bool [B, max_len]: true where the slot holds a real (non-pad) token.
  const at::Tensor& slot_valid() const { return slot_valid_; }
  // Real tokens per row in [0, length()).
  const std::vector<int64_t>& real_tokens() const { return real_tokens_; }
  // True once any padding slot was written (attention then needs a mask).
  bool has_padding() const { return has_padding_; }
  // Records `t` new slots; `mask` is [B, t] (0/1, any integer/bool dtype) or
  // undefined for all-real. The caller checked capacity.
  void Advance(int64_t t, const at::Tensor& mask);

 private:
  KVCache() = default;

  int64_t batch_ = 0;
  int64_t max_len_ = 0;
  int64_t length_ = 0;
  at::ScalarType dtype_ = at::kFloat;
  std::vector<at::Tensor> keys_, values_;
  at::Tensor slot_valid_;
  std::vector<int64_t> real_tokens_;
  bool has_padding_ = false;
};

}  // namespace internvl::llm
