// The serving engine's policy (DESIGN.md section 6), with no tensors and no
// model: every step it decides which sequences run, how many tokens each
// feeds (decode: 1; prefill: a chunk within the step's token budget), which
// KV blocks each gets, whom to preempt, and which waiting sequences join.
// The executor (engine.cc) runs the plan as one batched forward and reports
// the sampled tokens back through Commit(). Unit-tested without weights
// (scheduler_test.cc).
//
// Sequences. A sequence is a list of token ids (the prompt, then what was
// generated) of which the first num_computed have their K/V in the sequence's
// blocks. Each step feeds tokens [num_computed, num_computed + n); a step that
// feeds the last known token samples the next one. So a prompt is prefilled
// in chunks, then decoded one token per step, and a sequence that was
// preempted (its blocks freed) is recomputed the same way, prompt and
// generated tokens together, from wherever the prefix cache lets it start.
//
// Policy (vLLM's, in its chunked-prefill form):
//   1. Running sequences that decode (one token to feed) go first, oldest
//      first: they keep streaming whatever else arrives. A decode that needs a
//      new block when none is left preempts the newest running sequence
//      (recompute later; LIFO), possibly itself.
//   2. Running sequences still prefilling get the rest of the token budget,
//      oldest first.
//   3. If nobody was preempted, waiting sequences join in arrival order
//      (FCFS: the head of the queue blocks those behind it) while there are
//      sequence slots, budget, and blocks for the whole remaining prompt plus
//      a small watermark. Joining reuses the longest cached prefix of full
//      blocks (at least one token is always recomputed, for its logits).
// Blocks for a sequence's whole known length are reserved when it joins, so
// prefill never stalls for memory; decoding takes one block at a time.
//
// Thread-compatible: the engine's step thread owns it.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/types/span.h"
#include "core/chat/chat_types.h"
#include "core/engine/block_manager.h"

namespace internvl::engine {

struct SchedulerConfig {
  int block_size = 16;       // tokens per KV block
  int64_t num_blocks = 0;    // blocks in the pool (from the KV byte budget)
  int max_num_seqs = 32;     // running sequences at most
  int64_t max_batched_tokens = 512;  // tokens fed per step (decodes + prefill chunks)
  int64_t max_waiting = 256;  // queued sequences before Add() refuses
  bool prefix_caching = true;
  // Blocks kept free when admitting while others run (so that their decodes
  // do not need to preempt at once): this fraction of the pool, rounded up.
  double watermark = 0.01;

  // INVALID_ARGUMENT for sizes that cannot work.
  absl::Status Validate() const;
};

// What a new sequence is.
struct SequenceSpec {
  std::vector<int32_t> prompt;
  // Per prompt block (index = block number), what besides the token ids
  // determines its K/V: a digest of the image-embedding rows at its
  // positions. Missing or empty entries mean "text only".
  std::vector<std::string> block_extra;
  int max_new_tokens = 1;
  std::vector<int32_t> stop_ids;
};

enum class SeqState { kWaiting, kRunning, kFinished };

class Sequence {
 public:
  int64_t id() const { return id_; }
  SeqState state() const { return state_; }
  // Prompt then generated tokens.
  const std::vector<int32_t>& tokens() const { return tokens_; }
  int64_t prompt_len() const { return prompt_len_; }
  int64_t num_generated() const { return static_cast<int64_t>(tokens_.size()) - prompt_len_; }
  int64_t num_computed() const { return num_computed_; }
  // Block table: blocks()[i] holds positions [i * block_size, (i+1) * block_size).
  const std::vector<int32_t>& blocks() const { return blocks_; }
  // Prompt tokens whose K/V came from the prefix cache when it (last) joined.
  int64_t num_cached_tokens() const { return num_cached_tokens_; }
  int num_preemptions() const { return num_preemptions_; }
  std::optional<FinishReason> finish_reason() const { return finish_; }

 private:
  friend class Scheduler;
  int64_t id_ = 0;
  SeqState state_ = SeqState::kWaiting;
  std::vector<int32_t> tokens_;
  int64_t prompt_len_ = 0;
  int64_t num_computed_ = 0;
  std::vector<int32_t> blocks_;
  std::vector<BlockHash> hashes_;  // of leading full blocks of tokens_, computed as needed
  int64_t num_published_ = 0;      // leading blocks published to (or taken from) the cache
  std::vector<std::string> block_extra_;
  int max_new_tokens_ = 1;
  std::vector<int32_t> stop_ids_;
  int64_t num_cached_tokens_ = 0;
  int num_preemptions_ = 0;
  std::optional<FinishReason> finish_;
};

// One sequence's share of a step.
struct ScheduledSeq {
  Sequence* seq = nullptr;
  int64_t start = 0;    // first position fed (= num_computed before the step)
  int64_t num_new = 0;  // tokens fed
  bool sample = false;  // the step feeds its last known token: sample the next
};

struct StepPlan {
  std::vector<ScheduledSeq> seqs;  // decodes first, then prefill chunks
  std::vector<int64_t> preempted;  // ids sent back to the queue this step
  int64_t num_tokens = 0;
  bool empty() const { return seqs.empty(); }
};

struct SchedulerStats {
  int64_t running = 0;
  int64_t waiting = 0;
  int64_t preemptions = 0;  // total
  // Over every admission: tokens to prefill, and of those the ones whose
  // K/V came from the prefix cache.
  int64_t prefix_query_tokens = 0;
  int64_t prefix_hit_tokens = 0;
  BlockManagerStats blocks;
};

class Scheduler {
 public:
  // `config` must be valid.
  explicit Scheduler(const SchedulerConfig& config);

  const SchedulerConfig& config() const { return config_; }
  // Blocks a sequence of `tokens` positions needs.
  int64_t BlocksFor(int64_t tokens) const { return (tokens + config_.block_size - 1) / config_.block_size; }
  // Whether a sequence of this prompt and max_new_tokens fits the pool even
  // alone (prompt + max_new_tokens - 1 positions: the last token is never fed).
  bool CanEverFit(int64_t prompt_len, int64_t max_new_tokens) const;

  // Queues a sequence under `id` (unique among live ones). RESOURCE_EXHAUSTED
  // when the queue is full or the sequence can never fit; INVALID_ARGUMENT for
  // an empty prompt or max_new_tokens < 1.
  absl::Status Add(int64_t id, SequenceSpec spec);

  // The next step. Empty when there is nothing to run.
  StepPlan Schedule();

  // After the executor ran `plan`: `sampled[i]` is the token chosen for
  // plan.seqs[i] when its `sample` is set (ignored otherwise). Advances the
  // sequences, publishes newly filled blocks, and finishes those that
  // produced a stop id or reached max_new_tokens. Returns the ids that
  // finished (their blocks are released; the Sequence stays readable until
  // Remove()).
  std::vector<int64_t> Commit(const StepPlan& plan, absl::Span<const int32_t> sampled);

  // Ends a sequence now (cancelled, deadline, error) wherever it is: its
  // blocks are released. No-op for unknown or finished ids.
  void Finish(int64_t id, FinishReason reason);
  // Forgets a finished sequence.
  void Remove(int64_t id);

  const Sequence* Find(int64_t id) const;
  bool idle() const { return running_.empty() && waiting_.empty(); }
  SchedulerStats stats() const;
  const BlockManager& blocks() const { return blocks_; }

 private:
  // Hashes of the first `n` full blocks of `seq` (computing the missing ones).
  absl::Span<const BlockHash> Hashes(Sequence& seq, int64_t n);
  bool TryAdmit(Sequence& seq, int64_t budget, StepPlan& plan);
  void Preempt(Sequence& seq);
  void ReleaseBlocks(Sequence& seq);
  void Schedule(Sequence& seq, int64_t num_new, StepPlan& plan);
  void EndSequence(Sequence& seq, FinishReason reason);

  const SchedulerConfig config_;
  BlockManager blocks_;
  int64_t watermark_blocks_;
  absl::flat_hash_map<int64_t, std::unique_ptr<Sequence>> seqs_;
  std::deque<Sequence*> waiting_;
  std::vector<Sequence*> running_;  // admission order, oldest first
  int64_t preemptions_ = 0;
  int64_t prefix_query_tokens_ = 0, prefix_hit_tokens_ = 0;
};

}  // namespace internvl::engine
