#include "core/engine/scheduler.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "core/status.h"

namespace internvl::engine {

absl::Status SchedulerConfig::Validate() const {
  if (block_size < 1) return absl::InvalidArgumentError(absl::StrCat("block size must be >= 1, got ", block_size));
  if (num_blocks < 1) return absl::InvalidArgumentError("the KV cache budget holds no block");
  if (max_num_seqs < 1) return absl::InvalidArgumentError("max_num_seqs must be >= 1");
  if (max_batched_tokens < max_num_seqs)
    return absl::InvalidArgumentError(absl::StrCat("max_batched_tokens (", max_batched_tokens,
                                                   ") must be >= max_num_seqs (", max_num_seqs,
                                                   "): every running sequence decodes each step"));
  if (max_waiting < 0) return absl::InvalidArgumentError("max_waiting must be >= 0");
  if (!(watermark >= 0 && watermark < 1)) return absl::InvalidArgumentError("watermark must be in [0, 1)");
  return absl::OkStatus();
}

Scheduler::Scheduler(const SchedulerConfig& config)
    : config_(config),
      blocks_(config.num_blocks, config.prefix_caching),
      watermark_blocks_(static_cast<int64_t>(std::ceil(config.watermark * config.num_blocks))) {}

bool Scheduler::CanEverFit(int64_t prompt_len, int64_t max_new_tokens) const {
  return BlocksFor(prompt_len + max_new_tokens - 1) <= config_.num_blocks;
}

absl::Status Scheduler::Add(int64_t id, SequenceSpec spec) {
  if (spec.prompt.empty()) return absl::InvalidArgumentError("the prompt is empty");
  if (spec.max_new_tokens < 1) return absl::InvalidArgumentError("max_new_tokens must be >= 1");
  const int64_t prompt = static_cast<int64_t>(spec.prompt.size());
  if (!CanEverFit(prompt, spec.max_new_tokens)) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the request needs ", BlocksFor(prompt + spec.max_new_tokens - 1), " KV cache blocks (", prompt,
        " prompt tokens + max_new_tokens ", spec.max_new_tokens, ", ", config_.block_size,
        " tokens per block) but the whole pool has ", config_.num_blocks,
        ": lower max_new_tokens or raise --kv-cache-bytes"));
  }
  if (seqs_.contains(id)) return absl::InvalidArgumentError(absl::StrCat("sequence ", id, " already exists"));
  if (static_cast<int64_t>(waiting_.size()) >= config_.max_waiting) {
    return BusyError(absl::StrCat("the engine's queue is full (", waiting_.size(), " waiting; --max-waiting)"));
  }
  auto seq = std::make_unique<Sequence>();
  seq->id_ = id;
  seq->tokens_ = std::move(spec.prompt);
  seq->prompt_len_ = prompt;
  seq->block_extra_ = std::move(spec.block_extra);
  seq->max_new_tokens_ = spec.max_new_tokens;
  seq->stop_ids_ = std::move(spec.stop_ids);
  waiting_.push_back(seq.get());
  seqs_.emplace(id, std::move(seq));
  return absl::OkStatus();
}

absl::Span<const BlockHash> Scheduler::Hashes(Sequence& seq, int64_t n) {
  const int bs = config_.block_size;
  while (static_cast<int64_t>(seq.hashes_.size()) < n) {
    const int64_t i = static_cast<int64_t>(seq.hashes_.size());
    static const std::string kNone;
    const std::string& extra = i < static_cast<int64_t>(seq.block_extra_.size()) ? seq.block_extra_[i] : kNone;
    seq.hashes_.push_back(HashBlock(i == 0 ? nullptr : &seq.hashes_[i - 1],
                                    absl::MakeConstSpan(seq.tokens_).subspan(i * bs, bs), extra));
  }
  return absl::MakeConstSpan(seq.hashes_).first(n);
}

void Scheduler::Schedule(Sequence& seq, int64_t num_new, StepPlan& plan) {
  ScheduledSeq s;
  s.seq = &seq;
  s.start = seq.num_computed_;
  s.num_new = num_new;
  s.sample = seq.num_computed_ + num_new == static_cast<int64_t>(seq.tokens_.size());
  plan.seqs.push_back(s);
  plan.num_tokens += num_new;
}

void Scheduler::ReleaseBlocks(Sequence& seq) {
  // Tail first: the least recently released cached blocks are evicted first,
  // so a prefix's head outlives its tail.
  for (auto it = seq.blocks_.rbegin(); it != seq.blocks_.rend(); ++it) blocks_.Release(*it);
  seq.blocks_.clear();
  seq.num_published_ = 0;
}

void Scheduler::Preempt(Sequence& seq) {
  ReleaseBlocks(seq);
  seq.num_computed_ = 0;
  seq.state_ = SeqState::kWaiting;
  ++seq.num_preemptions_;
  ++preemptions_;
  running_.erase(std::find(running_.begin(), running_.end(), &seq));
  waiting_.push_front(&seq);
}

bool Scheduler::TryAdmit(Sequence& seq, int64_t budget, StepPlan& plan) {
  const int bs = config_.block_size;
  const int64_t len = static_cast<int64_t>(seq.tokens_.size());
  absl::Span<const BlockHash> hashes = Hashes(seq, len / bs);
  int64_t hit = blocks_.MatchPrefix(hashes);
  if (hit * bs >= len) hit = (len - 1) / bs;  // keep one token to compute, for its logits
  const int64_t fresh = BlocksFor(len) - hit;
  const int64_t needed = fresh + blocks_.CountUnreferenced(hashes, hit);
  // The watermark applies only when others are running (they decode into it).
  const int64_t reserve = running_.empty() ? 0 : watermark_blocks_;
  if (needed + reserve > blocks_.num_allocatable()) return false;
  for (int64_t i = 0; i < hit; ++i) seq.blocks_.push_back(blocks_.AcquireCached(hashes[i]));
  for (int64_t i = 0; i < fresh; ++i) seq.blocks_.push_back(*blocks_.Allocate());
  seq.num_computed_ = hit * bs;
  seq.num_published_ = hit;
  seq.num_cached_tokens_ = std::min(hit * bs, seq.prompt_len_);
  prefix_query_tokens_ += len;
  prefix_hit_tokens_ += hit * bs;
  seq.state_ = SeqState::kRunning;
  running_.push_back(&seq);
  Schedule(seq, std::min(len - seq.num_computed_, budget), plan);
  return true;
}

StepPlan Scheduler::Schedule() {
  StepPlan plan;
  int64_t budget = config_.max_batched_tokens;
  // 1. Decodes, oldest first; preempt the newest for a missing block.
  for (size_t i = 0; i < running_.size() && budget > 0;) {
    Sequence& seq = *running_[i];
    const int64_t remaining = static_cast<int64_t>(seq.tokens_.size()) - seq.num_computed_;
    if (remaining != 1) {
      ++i;
      continue;
    }
    const int64_t need = BlocksFor(seq.num_computed_ + 1) - static_cast<int64_t>(seq.blocks_.size());
    bool self_preempted = false;
    while (need > blocks_.num_allocatable()) {
      Sequence* victim = running_.back();
      plan.preempted.push_back(victim->id_);
      Preempt(*victim);
      if (victim == &seq) {
        self_preempted = true;
        break;
      }
    }
    if (self_preempted) break;  // it was the newest: nobody after it runs
    for (int64_t k = 0; k < need; ++k) seq.blocks_.push_back(*blocks_.Allocate());
    Schedule(seq, 1, plan);
    --budget;
    ++i;
  }
  // (A victim is always the newest running sequence, at or after position
  // i: never one already planned.)
  // 2. Prefill chunks of running sequences, oldest first (their blocks were
  // reserved when they joined).
  for (Sequence* seq : running_) {
    if (budget <= 0) break;
    const int64_t remaining = static_cast<int64_t>(seq->tokens_.size()) - seq->num_computed_;
    if (remaining <= 1) continue;
    const int64_t n = std::min(remaining, budget);
    Schedule(*seq, n, plan);
    budget -= n;
  }
  // 3. Newcomers, first come first served, unless memory is short.
  if (plan.preempted.empty()) {
    while (!waiting_.empty() && budget > 0 && static_cast<int>(running_.size()) < config_.max_num_seqs) {
      Sequence& seq = *waiting_.front();
      if (!TryAdmit(seq, budget, plan)) break;
      waiting_.pop_front();
      budget -= plan.seqs.back().num_new;
    }
  }
  return plan;
}

std::vector<int64_t> Scheduler::Commit(const StepPlan& plan, absl::Span<const int32_t> sampled) {
  std::vector<int64_t> finished;
  const int bs = config_.block_size;
  for (size_t i = 0; i < plan.seqs.size(); ++i) {
    const ScheduledSeq& s = plan.seqs[i];
    Sequence& seq = *s.seq;
    if (seq.state_ != SeqState::kRunning || seq.num_computed_ != s.start) continue;  // finished meanwhile
    seq.num_computed_ += s.num_new;
    const int64_t full = seq.num_computed_ / bs;
    if (blocks_.prefix_caching() && full > seq.num_published_) {
      absl::Span<const BlockHash> hashes = Hashes(seq, full);
      for (int64_t b = seq.num_published_; b < full; ++b) blocks_.Publish(seq.blocks_[b], hashes[b]);
    }
    seq.num_published_ = std::max(seq.num_published_, full);
    if (!s.sample || i >= sampled.size()) continue;
    const int32_t token = sampled[i];
    seq.tokens_.push_back(token);
    if (std::find(seq.stop_ids_.begin(), seq.stop_ids_.end(), token) != seq.stop_ids_.end()) {
      EndSequence(seq, FinishReason::kStop);
      finished.push_back(seq.id_);
    } else if (seq.num_generated() >= seq.max_new_tokens_) {
      EndSequence(seq, FinishReason::kLength);
      finished.push_back(seq.id_);
    }
  }
  return finished;
}

void Scheduler::EndSequence(Sequence& seq, FinishReason reason) {
  if (seq.state_ == SeqState::kRunning) {
    running_.erase(std::find(running_.begin(), running_.end(), &seq));
  } else if (seq.state_ == SeqState::kWaiting) {
    waiting_.erase(std::find(waiting_.begin(), waiting_.end(), &seq));
  }
  ReleaseBlocks(seq);
  seq.state_ = SeqState::kFinished;
  seq.finish_ = reason;
}

void Scheduler::Finish(int64_t id, FinishReason reason) {
  auto it = seqs_.find(id);
  if (it == seqs_.end() || it->second->state_ == SeqState::kFinished) return;
  EndSequence(*it->second, reason);
}

void Scheduler::Remove(int64_t id) {
  auto it = seqs_.find(id);
  if (it == seqs_.end()) return;
  if (it->second->state_ != SeqState::kFinished) EndSequence(*it->second, FinishReason::kCancelled);
  seqs_.erase(it);
}

const Sequence* Scheduler::Find(int64_t id) const {
  auto it = seqs_.find(id);
  return it == seqs_.end() ? nullptr : it->second.get();
}

SchedulerStats Scheduler::stats() const {
  SchedulerStats s;
  s.running = static_cast<int64_t>(running_.size());
  s.waiting = static_cast<int64_t>(waiting_.size());
  s.preemptions = preemptions_;
  s.prefix_query_tokens = prefix_query_tokens_;
  s.prefix_hit_tokens = prefix_hit_tokens_;
  s.blocks = blocks_.stats();
  return s;
}

}  // namespace internvl::engine
