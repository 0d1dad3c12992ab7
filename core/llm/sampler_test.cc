#include "core/llm/sampler.h"

#include <ATen/ATen.h>

#include <cmath>
#include <limits>
#include <set>

#include "gtest/gtest.h"

namespace internvl::llm {
namespace {

at::Tensor Row(std::vector<float> v) { return at::tensor(v).view({1, -1}); }

int CountFinite(const at::Tensor& t) { return at::isfinite(t).sum().item<int>(); }

TEST(Sampler, GreedyPicksArgmax) {
  auto s = Sampler::Create(SamplingParams{});
  ASSERT_TRUE(s.ok());
  auto ids = s->Next(at::tensor({0.1f, 2.0f, -1.0f, 1.9f, 0.0f, 3.0f}).view({2, 3}), {{}, {}});
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(*ids, (std::vector<int64_t>{1, 2}));
}

// Greedy without a penalty scans the logits in place: same ids as
// torch.argmax, ties (first wins) and NaN (wins) included.
TEST(Sampler, GreedyMatchesTorchArgmaxIncludingTiesAndNaN) {
  auto s = Sampler::Create(SamplingParams{});
  ASSERT_TRUE(s.ok());
  const float nan = std::nanf("");
  at::Tensor logits = at::randn({3, 1000});
  logits[1][10] = 50.0f;
  logits[1][700] = 50.0f;
  logits[2][5] = nan;
  logits[2][900] = 99.0f;
  auto ids = s->Next(logits, {{}, {}, {}});
  ASSERT_TRUE(ids.ok());
  const at::Tensor expected = logits.argmax(-1);
  for (int b = 0; b < 3; ++b) EXPECT_EQ((*ids)[b], expected[b].item<int64_t>()) << "row " << b;
  EXPECT_EQ((*ids)[1], 10);
  EXPECT_EQ((*ids)[2], 5);
}

TEST(Sampler, RepetitionPenaltyDividesPositiveAndMultipliesNegativeScores) {
  SamplingParams p;
  p.repetition_penalty = 2.0;
  auto s = Sampler::Create(p);
  ASSERT_TRUE(s.ok());
  // Token 0 was generated before (twice: applied once, as HF's gather/scatter).
  at::Tensor out = s->Process(Row({3.0f, 2.0f, -1.0f}), {{0, 0, 2}});
  EXPECT_FLOAT_EQ(out[0][0].item<float>(), 1.5f);
  EXPECT_FLOAT_EQ(out[0][1].item<float>(), 2.0f);
  EXPECT_FLOAT_EQ(out[0][2].item<float>(), -2.0f);
  // ...which changes the greedy choice.
  auto ids = s->Next(Row({3.0f, 2.0f, -1.0f}), {{0}});
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ((*ids)[0], 1);
}

TEST(Sampler, TemperatureThenTopKKeepsTheKLargest) {
  SamplingParams p;
  p.do_sample = true;
  p.temperature = 0.5;
  p.top_k = 2;
  auto s = Sampler::Create(p);
  ASSERT_TRUE(s.ok());
  at::Tensor out = s->Process(Row({1.0f, 4.0f, 3.0f, 2.0f}), {{}});
  EXPECT_EQ(CountFinite(out), 2);
  EXPECT_FLOAT_EQ(out[0][1].item<float>(), 8.0f);
  EXPECT_FLOAT_EQ(out[0][2].item<float>(), 6.0f);
  EXPECT_TRUE(std::isinf(out[0][0].item<float>()));
}

TEST(Sampler, TopPDropsTheTailBelowOneMinusP) {
  SamplingParams p;
  p.do_sample = true;
  p.top_k = 0;
  p.top_p = 0.8;
  auto s = Sampler::Create(p);
  ASSERT_TRUE(s.ok());
  // probs 0.5, 0.3, 0.15, 0.05: ascending cumsum 0.05, 0.20, 0.50, 1.0; those
  // <= 0.2 go, so tokens 0 and 1 stay.
  at::Tensor logits = at::log(at::tensor({0.5f, 0.3f, 0.15f, 0.05f})).view({1, 4});
  at::Tensor out = s->Process(logits, {{}});
  EXPECT_EQ(CountFinite(out), 2);
  EXPECT_TRUE(std::isfinite(out[0][0].item<float>()));
  EXPECT_TRUE(std::isfinite(out[0][1].item<float>()));
  // A tiny top_p still keeps the most likely token.
  p.top_p = 1e-6;
  auto tiny = Sampler::Create(p);
  ASSERT_TRUE(tiny.ok());
  EXPECT_EQ(CountFinite(tiny->Process(logits, {{}})), 1);
}

TEST(Sampler, SeededSamplingIsDeterministicAndSeedDependent) {
  SamplingParams p;
  p.do_sample = true;
  p.top_k = 0;
  const at::Tensor logits = at::zeros({1, 1000});  // uniform
  auto draw = [&](uint64_t seed) {
    p.seed = seed;
    auto s = Sampler::Create(p);
    EXPECT_TRUE(s.ok());
    std::vector<int64_t> ids;
    for (int i = 0; i < 20; ++i) ids.push_back((*s->Next(logits, {{}}))[0]);
    return ids;
  };
  EXPECT_EQ(draw(7), draw(7));
  EXPECT_NE(draw(7), draw(8));
  const std::vector<int64_t> ids = draw(7);
  EXPECT_GT(std::set<int64_t>(ids.begin(), ids.end()).size(), 10u);
}

TEST(Sampler, SamplingOnlyDrawsFromTheKeptSet) {
  SamplingParams p;
  p.do_sample = true;
  p.top_k = 2;
  p.seed = 3;
  auto s = Sampler::Create(p);
  ASSERT_TRUE(s.ok());
  for (int i = 0; i < 50; ++i) {
    auto id = s->Next(Row({0.0f, 5.0f, 0.1f, 5.0f, 0.2f}), {{}});
    ASSERT_TRUE(id.ok());
    EXPECT_TRUE((*id)[0] == 1 || (*id)[0] == 3) << (*id)[0];
  }
}

// Valid but extreme parameters overflow fp32 (HF's multinomial then raises on
// inf/NaN probabilities): the draw takes the distribution's limit instead.
TEST(Sampler, ExtremeTemperatureDrawsFromTheLimit) {
  for (double t : {1e-45, 1e-30}) {
    SamplingParams p;
    p.do_sample = true;
    p.temperature = t;
    p.top_k = 0;
    p.seed = 5;
    auto s = Sampler::Create(p);
    ASSERT_TRUE(s.ok());
    // Positive scores overflow to +inf, all-negative ones to -inf: greedy.
    for (const auto& row : {std::vector<float>{0.5f, 3.0f, -2.0f, 2.9f}, std::vector<float>{-9.0f, -4.0f, -5.0f}}) {
      for (int i = 0; i < 20; ++i) {
        auto id = s->Next(Row(row), {{}});
        ASSERT_TRUE(id.ok()) << "temperature " << t << ": " << id.status();
        EXPECT_EQ((*id)[0], 1) << "temperature " << t;
      }
    }
    // Tied maxima: an even draw among them, nothing else.
    std::set<int64_t> seen;
    for (int i = 0; i < 60; ++i) {
      auto id = s->Next(Row({7.0f, 1.0f, 7.0f, 6.99f}), {{}});
      ASSERT_TRUE(id.ok()) << id.status();
      seen.insert((*id)[0]);
    }
    EXPECT_EQ(seen, (std::set<int64_t>{0, 2})) << "temperature " << t;
  }
  // An ordinary temperature is untouched: the same draws as the warper's
  // plain division.
  SamplingParams p;
  p.do_sample = true;
  p.temperature = 0.7;
  p.seed = 9;
  auto a = Sampler::Create(p);
  ASSERT_TRUE(a.ok());
  at::Tensor logits = at::randn({1, 300});
  at::Tensor processed = a->Process(logits, {{}});
  at::Tensor expected = logits / 0.7;
  at::Tensor kth = std::get<0>(at::topk(expected, 50)).narrow(-1, 49, 1);
  expected = expected.masked_fill(expected < kth, -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(at::equal(processed, expected));
}

TEST(Sampler, PenaltyOverflowDrawsAmongTheOverflowedIds) {
  SamplingParams p;
  p.do_sample = true;
  p.repetition_penalty = 1e-40;  // divides positive scores of seen ids: +inf
  p.seed = 2;
  auto s = Sampler::Create(p);
  ASSERT_TRUE(s.ok());
  std::set<int64_t> seen;
  for (int i = 0; i < 60; ++i) {
    auto id = s->Next(Row({1.0f, 9.0f, 2.0f, -1.0f, 3.0f}), {{0, 2, 3}});
    ASSERT_TRUE(id.ok()) << id.status();
    seen.insert((*id)[0]);
  }
  EXPECT_EQ(seen, (std::set<int64_t>{0, 2}));
}

// NaN scores (a model's overflow) fail the draw with an error, not a crash.
TEST(Sampler, NaNScoresFailTheDraw) {
  SamplingParams p;
  p.do_sample = true;
  auto s = Sampler::Create(p);
  ASSERT_TRUE(s.ok());
  auto id = s->Next(Row({1.0f, std::nanf(""), 2.0f}), {{}});
  EXPECT_FALSE(id.ok());
}

TEST(Sampler, RejectsInvalidParameters) {
  SamplingParams p;
  p.do_sample = true;
  p.temperature = 0;
  EXPECT_EQ(Sampler::Create(p).status().code(), absl::StatusCode::kInvalidArgument);
  p = SamplingParams{};
  p.top_p = 1.5;
  EXPECT_EQ(Sampler::Create(p).status().code(), absl::StatusCode::kInvalidArgument);
  p = SamplingParams{};
  p.top_k = -1;
  EXPECT_EQ(Sampler::Create(p).status().code(), absl::StatusCode::kInvalidArgument);
  p = SamplingParams{};
  p.repetition_penalty = 0;
  EXPECT_EQ(Sampler::Create(p).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace internvl::llm
