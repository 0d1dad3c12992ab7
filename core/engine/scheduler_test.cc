// The scheduler's policy without a model: a fake executor "samples" token
// ids and the tests check joins/leaves, the chunked-prefill budget, block
// accounting, preemption and prefix reuse.
#include "core/engine/scheduler.h"

#include <map>
#include <random>
#include <set>

#include "core/status.h"
#include "gtest/gtest.h"

namespace internvl::engine {
namespace {

constexpr int32_t kStop = 2;

SchedulerConfig Config(int64_t num_blocks, int64_t budget = 64, int max_seqs = 8, int block_size = 4) {
  SchedulerConfig c;
  c.block_size = block_size;
  c.num_blocks = num_blocks;
  c.max_batched_tokens = budget;
  c.max_num_seqs = max_seqs;
  c.max_waiting = 100;
  c.watermark = 0;
  return c;
}

SequenceSpec Spec(int64_t prompt_len, int max_new, int32_t first = 10) {
  SequenceSpec s;
  for (int64_t i = 0; i < prompt_len; ++i) s.prompt.push_back(first + static_cast<int32_t>(i));
  s.max_new_tokens = max_new;
  s.stop_ids = {kStop};
  return s;
}

// Runs one step with a "model" that answers 100 + position (never the stop
// id unless `stop_at` says so for that sequence).
std::vector<int64_t> Step(Scheduler& s, StepPlan* out = nullptr, const std::map<int64_t, int64_t>& stop_at = {}) {
  StepPlan plan = s.Schedule();
  std::vector<int32_t> sampled;
  for (const ScheduledSeq& x : plan.seqs) {
    const int64_t pos = x.start + x.num_new;
    auto it = stop_at.find(x.seq->id());
    sampled.push_back(it != stop_at.end() && x.seq->num_generated() + 1 >= it->second ? kStop
                                                                                      : static_cast<int32_t>(100 + pos));
  }
  std::vector<int64_t> done = s.Commit(plan, sampled);
  if (out) *out = plan;
  return done;
}

void RunToEnd(Scheduler& s, int max_steps = 10000) {
  for (int i = 0; i < max_steps && !s.idle(); ++i) Step(s);
  ASSERT_TRUE(s.idle());
}

TEST(SchedulerConfig, RejectsBudgetBelowSequenceSlots) {
  SchedulerConfig c = Config(16, /*budget=*/4, /*max_seqs=*/8);
  EXPECT_EQ(c.Validate().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Config(16).Validate().ok());
}

TEST(Scheduler, SingleSequencePrefillsThenDecodesOneTokenPerStep) {
  Scheduler s(Config(32, /*budget=*/64));
  ASSERT_TRUE(s.Add(1, Spec(10, 3)).ok());
  StepPlan p;
  EXPECT_TRUE(Step(s, &p).empty());
  ASSERT_EQ(p.seqs.size(), 1u);
  EXPECT_EQ(p.seqs[0].start, 0);
  EXPECT_EQ(p.seqs[0].num_new, 10);
  EXPECT_TRUE(p.seqs[0].sample);
  EXPECT_TRUE(Step(s, &p).empty());
  EXPECT_EQ(p.seqs[0].start, 10);
  EXPECT_EQ(p.seqs[0].num_new, 1);
  EXPECT_EQ(Step(s, &p), std::vector<int64_t>{1});  // third token: max_new_tokens
  const Sequence* seq = s.Find(1);
  ASSERT_NE(seq, nullptr);
  EXPECT_EQ(seq->finish_reason(), FinishReason::kLength);
  EXPECT_EQ(seq->num_generated(), 3);
  EXPECT_EQ(seq->tokens()[10], 110);
  EXPECT_EQ(seq->tokens()[11], 111);
  EXPECT_TRUE(s.idle());
  EXPECT_EQ(s.blocks().stats().used, 0);
}

TEST(Scheduler, StopIdEndsTheSequence) {
  Scheduler s(Config(32));
  ASSERT_TRUE(s.Add(1, Spec(5, 100)).ok());
  for (int i = 0; i < 50 && !s.idle(); ++i) Step(s, nullptr, {{1, 4}});
  const Sequence* seq = s.Find(1);
  EXPECT_EQ(seq->finish_reason(), FinishReason::kStop);
  EXPECT_EQ(seq->num_generated(), 4);
  EXPECT_EQ(seq->tokens().back(), kStop);
}

TEST(Scheduler, ChunkedPrefillRespectsTheTokenBudgetAndDecodesGoFirst) {
  Scheduler s(Config(64, /*budget=*/8, /*max_seqs=*/4));
  ASSERT_TRUE(s.Add(1, Spec(3, 20)).ok());
  Step(s);  // 1 prefilled
  ASSERT_TRUE(s.Add(2, Spec(30, 5)).ok());
  // Each step: 1's decode token, then 7 of 2's prompt.
  for (int k = 0; k < 4; ++k) {
    StepPlan p;
    Step(s, &p);
    EXPECT_LE(p.num_tokens, 8);
    ASSERT_GE(p.seqs.size(), 1u);
    EXPECT_EQ(p.seqs[0].seq->id(), 1) << "the decode comes first, step " << k;
    EXPECT_EQ(p.seqs[0].num_new, 1);
    if (k < 4 && p.seqs.size() > 1) {
      EXPECT_EQ(p.seqs[1].seq->id(), 2);
      EXPECT_EQ(p.seqs[1].num_new, std::min<int64_t>(7, 30 - 7 * k));
      EXPECT_EQ(p.seqs[1].sample, 7 * (k + 1) >= 30);
    }
  }
  // 30 = 7 * 4 + 2: the fifth step finishes the prompt and samples.
  StepPlan p;
  Step(s, &p);
  ASSERT_EQ(p.seqs.size(), 2u);
  EXPECT_EQ(p.seqs[1].num_new, 2);
  EXPECT_TRUE(p.seqs[1].sample);
  RunToEnd(s);
  EXPECT_EQ(s.blocks().stats().used, 0);
}

TEST(Scheduler, NewcomersJoinBetweenStepsAndLeaveAtOnce) {
  Scheduler s(Config(64, 64, 8));
  ASSERT_TRUE(s.Add(1, Spec(4, 10)).ok());
  Step(s);
  EXPECT_EQ(s.stats().running, 1);
  ASSERT_TRUE(s.Add(2, Spec(4, 2)).ok());
  ASSERT_TRUE(s.Add(3, Spec(4, 10)).ok());
  StepPlan p;
  Step(s, &p);
  EXPECT_EQ(s.stats().running, 3);
  ASSERT_EQ(p.seqs.size(), 3u);
  EXPECT_EQ(p.seqs[0].seq->id(), 1);
  Step(s);  // 2 produces its second token and leaves
  EXPECT_EQ(s.stats().running, 2);
  EXPECT_EQ(s.Find(2)->state(), SeqState::kFinished);
  s.Finish(3, FinishReason::kCancelled);
  EXPECT_EQ(s.stats().running, 1);
  Step(s, &p);
  ASSERT_EQ(p.seqs.size(), 1u);
  EXPECT_EQ(p.seqs[0].seq->id(), 1);
}

TEST(Scheduler, SequenceSlotsBoundTheRunningSet) {
  Scheduler s(Config(256, 64, /*max_seqs=*/2));
  for (int i = 1; i <= 4; ++i) ASSERT_TRUE(s.Add(i, Spec(4, 3)).ok());
  Step(s);
  EXPECT_EQ(s.stats().running, 2);
  EXPECT_EQ(s.stats().waiting, 2);
  RunToEnd(s);
}

TEST(Scheduler, RefusesWhatCanNeverFitAndAFullQueue) {
  SchedulerConfig c = Config(4);  // 16 positions
  c.max_waiting = 2;
  Scheduler s(c);
  const absl::Status never = s.Add(1, Spec(10, 8));  // 17 positions
  EXPECT_EQ(never.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_FALSE(IsBusy(never)) << never;  // no retry can pass
  EXPECT_TRUE(s.Add(2, Spec(10, 7)).ok());  // 16 positions
  EXPECT_TRUE(s.Add(3, Spec(2, 2)).ok());
  const absl::Status full = s.Add(4, Spec(2, 2));
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(IsBusy(full)) << full;  // a later one may
  EXPECT_EQ(s.Add(5, Spec(0, 2)).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.Add(2, Spec(2, 2)).code(), absl::StatusCode::kInvalidArgument);  // duplicate id
  RunToEnd(s);
}

TEST(Scheduler, WaitsForBlocksThenJoins) {
  Scheduler s(Config(6));  // 24 positions
  ASSERT_TRUE(s.Add(1, Spec(12, 4)).ok());  // 3 blocks now, up to 4
  ASSERT_TRUE(s.Add(2, Spec(12, 4)).ok());  // needs 3: only 3 left -> joins
  ASSERT_TRUE(s.Add(3, Spec(12, 4)).ok());  // waits
  Step(s);
  EXPECT_EQ(s.stats().running, 2);
  EXPECT_EQ(s.stats().waiting, 1);
  RunToEnd(s);
  EXPECT_EQ(s.Find(3)->num_generated(), 4);
}

TEST(Scheduler, OutOfBlocksPreemptsTheNewestAndRecomputesItLater) {
  Scheduler s(Config(5, 64, 8));  // 20 positions
  ASSERT_TRUE(s.Add(1, Spec(8, 8)).ok());  // 2 blocks, grows to 4
  ASSERT_TRUE(s.Add(2, Spec(8, 8)).ok());  // 2 blocks, grows to 4
  Step(s);                                 // both prefilled: 4 blocks used, 1 free
  EXPECT_EQ(s.stats().running, 2);
  int64_t preempted = -1;
  for (int i = 0; i < 10 && preempted < 0; ++i) {
    StepPlan p;
    Step(s, &p);
    if (!p.preempted.empty()) preempted = p.preempted[0];
  }
  EXPECT_EQ(preempted, 2);  // the newest
  EXPECT_GE(s.stats().preemptions, 1);
  const Sequence* two = s.Find(2);
  EXPECT_EQ(two->state(), SeqState::kWaiting);
  EXPECT_EQ(two->num_computed(), 0);
  const std::vector<int32_t> before = two->tokens();
  RunToEnd(s);
  // 2 resumed where it was: its tokens are a continuation of what it had.
  const Sequence* done = s.Find(2);
  ASSERT_GE(done->tokens().size(), before.size());
  EXPECT_TRUE(std::equal(before.begin(), before.end(), done->tokens().begin()));
  EXPECT_EQ(done->num_generated(), 8);
  // The recomputed positions carry the same "model" output 100 + position.
  for (int64_t p = 8; p < 16; ++p) EXPECT_EQ(done->tokens()[p], 100 + p);
  EXPECT_EQ(s.blocks().stats().used, 0);
}

TEST(Scheduler, LoneSequenceThatFillsThePoolIsNeverPreemptedByItself) {
  Scheduler s(Config(4, 64, 8));  // 16 positions
  ASSERT_TRUE(s.Add(1, Spec(9, 8)).ok());  // 16 positions exactly
  RunToEnd(s);
  EXPECT_EQ(s.Find(1)->num_generated(), 8);
  EXPECT_EQ(s.stats().preemptions, 0);
}

TEST(Scheduler, PrefixBlocksAreReusedAndOnlyTheNewTokensPrefilled) {
  Scheduler s(Config(64, 256, 8));
  ASSERT_TRUE(s.Add(1, Spec(18, 6)).ok());
  RunToEnd(s);
  // Second turn: the first prompt + its 6 answers (the stop id never came)
  // + 5 new tokens.
  std::vector<int32_t> turn2 = s.Find(1)->tokens();
  for (int i = 0; i < 5; ++i) turn2.push_back(500 + i);
  SequenceSpec spec;
  spec.prompt = turn2;
  spec.max_new_tokens = 3;
  ASSERT_TRUE(s.Add(2, spec).ok());
  StepPlan p;
  Step(s, &p);
  ASSERT_EQ(p.seqs.size(), 1u);
  // 18 + 5 generated tokens were fed in turn 1 (the sixth was never fed):
  // 23 computed = 5 full blocks of 4.
  EXPECT_EQ(p.seqs[0].start, 20);
  EXPECT_EQ(p.seqs[0].num_new, static_cast<int64_t>(turn2.size()) - 20);
  EXPECT_EQ(s.Find(2)->num_cached_tokens(), 20);
  EXPECT_EQ(s.stats().prefix_hit_tokens, 20);
  RunToEnd(s);
  EXPECT_EQ(s.blocks().stats().used, 0);
}

TEST(Scheduler, ConcurrentSequencesShareCachedBlocksAndRefcountsThem) {
  Scheduler s(Config(64, 256, 8));
  ASSERT_TRUE(s.Add(1, Spec(16, 5)).ok());
  Step(s);  // 1's prompt computed and published
  ASSERT_TRUE(s.Add(2, Spec(16, 2)).ok());
  StepPlan p;
  Step(s, &p);
  const Sequence* one = s.Find(1);
  const Sequence* two = s.Find(2);
  // All 16 prompt tokens cached: the last block is recomputed privately.
  EXPECT_EQ(two->num_cached_tokens(), 12);
  for (int b = 0; b < 3; ++b) {
    EXPECT_EQ(one->blocks()[b], two->blocks()[b]);
    EXPECT_EQ(s.blocks().ref_count(one->blocks()[b]), 2);
  }
  EXPECT_NE(one->blocks()[3], two->blocks()[3]);
  RunToEnd(s);
  EXPECT_EQ(s.blocks().stats().used, 0);
}

TEST(Scheduler, DifferentBlockExtraContentMeansNoReuse) {
  Scheduler s(Config(64, 256, 8));
  SequenceSpec a = Spec(16, 1);
  a.block_extra = {"image A"};
  ASSERT_TRUE(s.Add(1, a).ok());
  RunToEnd(s);
  SequenceSpec b = Spec(16, 1);
  b.block_extra = {"image B"};
  ASSERT_TRUE(s.Add(2, b).ok());
  Step(s);
  EXPECT_EQ(s.Find(2)->num_cached_tokens(), 0);
  SequenceSpec c = Spec(17, 1);
  c.block_extra = {"image A"};
  ASSERT_TRUE(s.Add(3, c).ok());
  RunToEnd(s);
  EXPECT_EQ(s.Find(3)->num_cached_tokens(), 16);
}

TEST(Scheduler, UnreferencedCachedBlocksAreEvictedLeastRecentFirst) {
  Scheduler s(Config(8, 256, 8));  // 32 positions
  ASSERT_TRUE(s.Add(1, Spec(16, 1, /*first=*/10)).ok());
  RunToEnd(s);
  ASSERT_TRUE(s.Add(2, Spec(16, 1, /*first=*/1000)).ok());
  RunToEnd(s);
  EXPECT_EQ(s.blocks().stats().cached_free, 8);
  // A third, different prompt of 4 blocks evicts the oldest ones: 1's.
  ASSERT_TRUE(s.Add(3, Spec(16, 1, /*first=*/5000)).ok());
  RunToEnd(s);
  EXPECT_EQ(s.blocks().stats().evictions, 4);
  ASSERT_TRUE(s.Add(4, Spec(17, 1, /*first=*/1000)).ok());  // 2's prefix survives
  Step(s);
  EXPECT_EQ(s.Find(4)->num_cached_tokens(), 16);
  RunToEnd(s);
  ASSERT_TRUE(s.Add(5, Spec(17, 1, /*first=*/10)).ok());  // 1's is gone
  Step(s);
  EXPECT_EQ(s.Find(5)->num_cached_tokens(), 0);
  RunToEnd(s);
}

TEST(Scheduler, WithoutPrefixCachingNothingIsReused) {
  SchedulerConfig c = Config(64, 256, 8);
  c.prefix_caching = false;
  Scheduler s(c);
  ASSERT_TRUE(s.Add(1, Spec(16, 1)).ok());
  RunToEnd(s);
  ASSERT_TRUE(s.Add(2, Spec(17, 1)).ok());
  Step(s);
  EXPECT_EQ(s.Find(2)->num_cached_tokens(), 0);
  RunToEnd(s);
  EXPECT_EQ(s.blocks().stats().cached_free, 0);
  EXPECT_EQ(s.blocks().stats().free, 64);
}

// Any mix of finished, cancelled and preempted sequences leaves every block
// free (or cached-free) and refcounts consistent, whatever the order.
TEST(Scheduler, BlockAccountingNeverLeaks) {
  std::mt19937 rng(7);
  for (int round = 0; round < 20; ++round) {
    Scheduler s(Config(/*num_blocks=*/12 + round % 5, /*budget=*/16 + round, /*max_seqs=*/4, /*block_size=*/4));
    int64_t next_id = 1;
    std::set<int64_t> live;
    for (int step = 0; step < 300; ++step) {
      if (rng() % 3 == 0) {
        // Shared prefixes half the time, so blocks are shared and cached.
        const int64_t len = 1 + rng() % 20;
        const int32_t first = rng() % 2 ? 10 : static_cast<int32_t>(1000 * next_id);
        absl::Status st = s.Add(next_id, Spec(len, 1 + rng() % 12, first));
        if (st.ok()) live.insert(next_id);
        ++next_id;
      }
      if (!live.empty() && rng() % 7 == 0) {
        auto it = live.begin();
        std::advance(it, rng() % live.size());
        s.Finish(*it, FinishReason::kCancelled);
      }
      std::map<int64_t, int64_t> stops;
      for (int64_t id : live)
        if (rng() % 5 == 0) stops[id] = 1;
      Step(s, nullptr, stops);
      // Invariant: each block's refcount = the number of live block tables
      // holding it.
      std::map<int32_t, int> refs;
      for (int64_t id : live) {
        const Sequence* q = s.Find(id);
        if (q->state() == SeqState::kFinished) continue;
        EXPECT_EQ(q->state() == SeqState::kWaiting, q->blocks().empty());
        for (int32_t b : q->blocks()) ++refs[b];
      }
      const BlockManagerStats st = s.blocks().stats();
      EXPECT_EQ(st.used, static_cast<int64_t>(refs.size()));
      for (auto [b, n] : refs) EXPECT_EQ(s.blocks().ref_count(b), n);
      EXPECT_EQ(st.used + st.free + st.cached_free, st.num_blocks);
    }
    for (int64_t id : live) s.Finish(id, FinishReason::kCancelled);
    EXPECT_TRUE(s.idle());
    EXPECT_EQ(s.blocks().stats().used, 0);
  }
}

}  // namespace
}  // namespace internvl::engine
