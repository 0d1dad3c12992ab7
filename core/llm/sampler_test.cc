#include "core/llm/sampler.h"

#include <ATen/ATen.h>

#include <cmath>
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
