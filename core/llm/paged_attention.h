// Attention of a batched forward over the paged KV pool (paged_kv.h): the
// tokens of every scheduled sequence, concatenated into one [1, N, ...]
// batch, each attending causally over its own blocks. Used by the modules'
// attention when LayerContext::paged is set (CausalLM::ForwardPaged).
//
//  - Every fed token's key and value are written to its sequence's slot.
//  - Decoding sequences (one new token) run the split-softmax decode kernel
//    over their blocks on CPU in fp32 (PagedDecodeAttention in gemv.h);
//    elsewhere (GPUs, generic kernels) all of them at once: their blocks
//    gathered into one padded batch, scores, fp32 softmax and values in
//    three batched products.
//  - Prefill chunks (several new tokens) gather their sequence's keys once
//    per layer and run the reference's eager attention (scores, fp32
//    softmax, values) in tiles of queries: a tile sees only the keys up to
//    its last query (causal blocks skipped) and its scores stay a few MB, so
//    memory is bounded by chunk x context, never context^2.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "core/llm/paged_kv.h"

namespace internvl::llm {

// What every layer of one ForwardPaged pass shares.
struct PagedContext {
  PagedKVPool* pool = nullptr;
  const std::vector<PagedSeq>* seqs = nullptr;
  std::vector<int64_t> row_begin;     // first token row of each sequence in the batch
  at::Tensor slot_block;              // int64 [N]: block of each fed token (undefined on the CPU)
  at::Tensor slot_offset;             // int64 [N]: its slot in the block (likewise)
  std::vector<int64_t> decode_seqs;   // indices of sequences feeding one token
  std::vector<int64_t> prefill_seqs;  // the others
  // The decoding sequences where the CPU kernel does not run (other devices,
  // generic kernels), in groups of similar length: each group's keys are
  // gathered padded to its longest member, and a sequence joins a group only
  // when at least half as long as its first (longest) one, so the padded
  // gathers stay under twice the positions really read, whatever the mix of
  // lengths. On the pool's device: the group's batch rows (int64 [D]), block
  // tables padded with block 0 (int64 [D, nb]) and which of the nb *
  // block_size positions lie past each length (bool [D, 1, 1, nb * bs]).
  struct DecodeGroup {
    std::vector<int64_t> seqs;  // indices into the step's sequences
    at::Tensor rows, blocks, masked;
  };
  std::vector<DecodeGroup> decode_groups;
  // slot_block and slot_offset on the host.
  std::vector<int64_t> slot_block_host, slot_offset_host;

  // Where fed row i's slot for kv head j starts in a CPU pool [blocks, KV,
  // bs, d] whose rows of d are contiguous (paged_kv.h), in elements. Inside
  // the pool: CausalLM::ForwardPaged refuses a block outside it before any
  // layer runs, and offsets are positions modulo the block size.
  int64_t SlotElement(const at::Tensor& pool, int64_t i, int64_t j) const {
    return slot_block_host[i] * pool.stride(0) + j * pool.stride(1) + slot_offset_host[i] * pool.size(3);
  }
};

// Builds the shared part for `seqs` over `pool` (validated by the caller).
PagedContext MakePagedContext(PagedKVPool& pool, const std::vector<PagedSeq>& seqs);

// q [1, N, H, d] (rotated), k and v [1, N, KV, d] (k rotated) -> [1, N, H*d].
at::Tensor PagedAttend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const PagedContext& ctx,
                       int layer, int64_t heads, int64_t kv_heads, int64_t head_dim);

}  // namespace internvl::llm
