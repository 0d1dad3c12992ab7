#include "core/llm/sampler.h"

#include <ATen/ATen.h>

#include <cmath>
#include <limits>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "core/llm/gemv.h"
#include "gtest/gtest.h"

namespace internvl::llm {
namespace {

at::Tensor Row(std::vector<float> v) { return at::tensor(v).view({1, -1}); }

int CountFinite(const at::Tensor& t) { return at::isfinite(t).sum().item<int>(); }

// The greedy scan's paths: the AVX2 one (where the CPU has it) and the
// portable SSE2 one, forced as FastLinear's kernels are (gemv.h).
std::vector<std::optional<GemvKernel>> ArgMaxPaths() {
  std::vector<std::optional<GemvKernel>> paths = {GemvKernel::kPortable};
  if (ForceGemvKernel(GemvKernel::kAvx2)) paths.push_back(GemvKernel::kAvx2);
  ForceGemvKernel(std::nullopt);
  return paths;
}
struct ForcedKernel {
  explicit ForcedKernel(std::optional<GemvKernel> k) { ForceGemvKernel(k); }
  ~ForcedKernel() { ForceGemvKernel(std::nullopt); }
};

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
  for (const std::optional<GemvKernel>& path : ArgMaxPaths()) {
    const ForcedKernel forced(path);
    SCOPED_TRACE(path == GemvKernel::kAvx2 ? "avx2" : "portable");
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

// The vector scans' tails: rows whose length is not a multiple of 16 or 4
// (the 16-value steps, then 4-value ones, then single values), the maximum
// or a NaN in the last positions or in each lane set, all -inf, signed zeros.
TEST(Sampler, GreedyArgmaxTailsAndEdges) {
  for (const std::optional<GemvKernel>& path : ArgMaxPaths()) {
    const ForcedKernel forced(path);
    SCOPED_TRACE(path == GemvKernel::kAvx2 ? "avx2" : "portable");
    auto s = Sampler::Create(SamplingParams{});
    ASSERT_TRUE(s.ok());
    const float nan = std::nanf(""), inf = std::numeric_limits<float>::infinity();
    for (int64_t n : {1, 2, 3, 5, 7, 15, 16, 17, 19, 20, 23, 33, 36, 1003}) {
      for (int64_t at : {n - 1, n / 2, n / 3, std::min<int64_t>(n - 1, 13), std::min<int64_t>(n - 1, 18)}) {
        for (float special : {50.0f, nan, -inf}) {
          at::Tensor row = at::randn({1, n});
          if (special == -inf) row.fill_(-inf);
          row[0][at] = special;
          auto ids = s->Next(row, {{}});
          ASSERT_TRUE(ids.ok());
          EXPECT_EQ((*ids)[0], row.argmax(-1).item<int64_t>()) << "n " << n << " at " << at << " " << special;
        }
      }
    }
    auto ids = s->Next(Row({-1.0f, -0.0f, 0.0f, -2.0f, 0.0f}), {{}});
    ASSERT_TRUE(ids.ok());
    EXPECT_EQ((*ids)[0], 1);
  }
}

// The maximum tied in several lanes of the vector scan, at any distance: the
// first position wins, as torch.argmax's.
TEST(Sampler, GreedyArgmaxFirstOfTiedMaximaAcrossLanes) {
  for (const std::optional<GemvKernel>& path : ArgMaxPaths()) {
    const ForcedKernel forced(path);
    SCOPED_TRACE(path == GemvKernel::kAvx2 ? "avx2" : "portable");
    auto s = Sampler::Create(SamplingParams{});
    ASSERT_TRUE(s.ok());
    at::manual_seed(11);
    for (int64_t n : {8, 9, 16, 17, 31, 35, 64, 151655}) {
      for (int trial = 0; trial < 20; ++trial) {
        const at::Tensor row = at::randint(0, trial % 2 == 0 ? 3 : 1000, {1, n}).to(at::kFloat);
        auto ids = s->Next(row, {{}});
        ASSERT_TRUE(ids.ok());
        EXPECT_EQ((*ids)[0], row.argmax(-1).item<int64_t>()) << "n " << n << " trial " << trial;
      }
    }
  }
}

// The draw's own loops (Candidates) keep exactly the ids Process leaves
// finite, with the same score bits, and their softmax; over temperatures,
// top-k below, at and above the vocabulary, top-p, and a penalty whose
// context repeats ids. Top-k on scores with ties (rounded to 1/8); top-p on
// distinct ones (ties at its boundary go in torch.sort's order, which
// std::sort leaves to chance: see TopPBoundaryTiesGoByIdAscending).
TEST(Sampler, CandidatesKeepWhatProcessKeeps) {
  at::manual_seed(11);
  const int64_t vocab = 3000;
  const at::Tensor tied = (at::randn({1, vocab}) * 24).round().div(8);
  const at::Tensor distinct = at::randn({1, vocab}) * 3;
  std::vector<int64_t> context;
  for (int i = 0; i < 200; ++i) context.push_back((i * 7919) % vocab);
  context.push_back(context.front());
  int cases = 0;
  for (double t : {1.0, 0.7, 1.9}) {
    for (int64_t k : {int64_t{0}, int64_t{1}, int64_t{5}, int64_t{50}, vocab, vocab + 5}) {
      for (double top_p : {1.0, 0.9, 0.5}) {
        for (double penalty : {1.0, 1.3}) {
          if (k == 0 && top_p < 1.0) continue;  // the libtorch ops' case
          SamplingParams p;
          p.do_sample = true;
          p.temperature = t;
          p.top_k = k;
          p.top_p = top_p;
          p.repetition_penalty = penalty;
          // With the repetition penalty, the additive ones too (over the
          // same ids, counted: the first one twice).
          if (penalty != 1.0) p.frequency_penalty = 0.37, p.presence_penalty = -0.6;
          auto s = Sampler::Create(p);
          ASSERT_TRUE(s.ok());
          const std::string what = "t " + std::to_string(t) + " k " + std::to_string(k) + " top_p " +
                                   std::to_string(top_p) + " penalty " + std::to_string(penalty);
          const at::Tensor& logits = top_p < 1.0 ? distinct : tied;
          Sampler::Kept k;
          ASSERT_TRUE(s->Candidates(logits.data_ptr<float>(), vocab, context, k, context)) << what;
          const Sampler::Kept* kept = &k;
          const at::Tensor processed = s->Process(logits, {context}, {context}).view({-1});
          const at::Tensor finite = at::nonzero(at::isfinite(processed)).view({-1});
          ASSERT_EQ(static_cast<int64_t>(kept->ids.size()), finite.numel()) << what;
          const at::Tensor probs = processed.softmax(-1);
          double total = 0;
          for (size_t i = 0; i < kept->ids.size(); ++i) {
            const int64_t id = kept->ids[i];
            ASSERT_EQ(id, finite[i].item<int64_t>()) << what;
            ASSERT_EQ(kept->scores[i], processed[id].item<float>()) << what << " id " << id;
            EXPECT_NEAR(kept->probs[i], probs[id].item<float>(), 1e-6) << what << " id " << id;
            total += kept->probs[i];
          }
          EXPECT_NEAR(total, 1.0, 1e-5) << what;  // (fp32 probabilities)
          ++cases;
        }
      }
    }
  }
  EXPECT_EQ(cases, 3 * 6 * 3 * 2 - 3 * 2 * 2);
}

// Top-p's boundary inside a run of equal scores: the lower ids count first
// in the ascending order, so they go first. Four tied ids of probability 0.2
// and one of 0.2: with top_p 0.5 the cumulative passes 0.5 after 0.6, so
// the first two of the tie go (0.2, 0.4 <= 0.5), the rest stay.
TEST(Sampler, TopPBoundaryTiesGoByIdAscending) {
  SamplingParams p;
  p.do_sample = true;
  p.top_p = 0.5;
  auto s = Sampler::Create(p);
  ASSERT_TRUE(s.ok());
  const std::vector<float> row = {1.0f, 1.0f, 1.0f, 1.0f, 1.0f};
  Sampler::Kept kept;
  ASSERT_TRUE(s->Candidates(row.data(), 5, {}, kept));
  EXPECT_EQ(kept.ids, (std::vector<int64_t>{2, 3, 4}));
}

// Draws follow the kept ids' probabilities: 40000 draws from [0.5, 0.3, 0.2]
// (and, with top_k 2, from [0.5, 0.3] renormalized), each frequency within
// 0.012 of its probability (over 5 standard deviations).
TEST(Sampler, DrawFrequenciesFollowTheProbabilities) {
  for (int64_t k : {int64_t{0}, int64_t{2}}) {
    SamplingParams p;
    p.do_sample = true;
    p.top_k = k;
    p.seed = 17;
    auto s = Sampler::Create(p);
    ASSERT_TRUE(s.ok());
    const at::Tensor logits = Row({std::log(0.5f), std::log(0.3f), std::log(0.2f)});
    std::vector<int> count(3, 0);
    const int draws = 40000;
    for (int i = 0; i < draws; ++i) {
      auto id = s->Next(logits, {{}});
      ASSERT_TRUE(id.ok());
      ++count[(*id)[0]];
    }
    const std::vector<double> expected =
        k == 2 ? std::vector<double>{0.625, 0.375, 0} : std::vector<double>{0.5, 0.3, 0.2};
    for (int i = 0; i < 3; ++i) EXPECT_NEAR(count[i] / double(draws), expected[i], 0.012) << "k " << k << " id " << i;
  }
}

// Greedy with a repetition penalty (our loop) picks torch.argmax of Process's
// scores, rows of a batch each with their own context.
TEST(Sampler, GreedyWithPenaltyIsArgmaxOfTheProcessedScores) {
  at::manual_seed(5);
  SamplingParams p;
  p.repetition_penalty = 1.8;
  auto s = Sampler::Create(p);
  ASSERT_TRUE(s.ok());
  for (int round = 0; round < 20; ++round) {
    const at::Tensor logits = at::randn({3, 500});
    std::vector<std::vector<int64_t>> context(3);
    for (int b = 0; b < 3; ++b) {
      // The row's own best few ids, so that the penalty changes the answer.
      const at::Tensor top = std::get<1>(at::topk(logits[b], 1 + (round + b) % 4));
      for (int64_t i = 0; i < top.numel(); ++i) context[b].push_back(top[i].item<int64_t>());
    }
    auto ids = s->Next(logits, context);
    ASSERT_TRUE(ids.ok());
    const at::Tensor expected = s->Process(logits, context).argmax(-1);
    for (int b = 0; b < 3; ++b) EXPECT_EQ((*ids)[b], expected[b].item<int64_t>()) << "round " << round;
  }
}

// OpenAI's additive penalties: each generated id loses frequency x its
// count + presence (after the repetition penalty), in our loops and in the
// libtorch ops alike; greedy picks accordingly; out of range is refused.
TEST(Sampler, AdditivePenaltiesSubtractCountTimesFrequencyPlusPresence) {
  SamplingParams p;
  p.frequency_penalty = 0.5;
  p.presence_penalty = 0.25;
  auto s = Sampler::Create(p);
  ASSERT_TRUE(s.ok());
  const at::Tensor row = Row({3.0f, 4.0f, 2.0f, 3.5f});
  const std::vector<int64_t> generated = {1, 3, 1};  // id 1 twice: -1.25; id 3 once: -0.75
  const at::Tensor processed = s->Process(row, {{}}, {generated}).view({-1});
  EXPECT_FLOAT_EQ(processed[0].item<float>(), 3.0f);
  EXPECT_FLOAT_EQ(processed[1].item<float>(), 2.75f);
  EXPECT_FLOAT_EQ(processed[2].item<float>(), 2.0f);
  EXPECT_FLOAT_EQ(processed[3].item<float>(), 2.75f);
  auto greedy = s->Next(row, {{}}, {generated});
  ASSERT_TRUE(greedy.ok()) << greedy.status();
  EXPECT_EQ((*greedy)[0], 0);       // 3.0 beats 2.75 (without the penalties: id 1)
  auto plain = s->Next(row, {{}});  // nothing generated yet: nothing to penalize
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ((*plain)[0], 1);
  // After the repetition penalty: 4 / 2 = 2, then - 1.25.
  p.repetition_penalty = 2.0;
  auto both = Sampler::Create(p);
  ASSERT_TRUE(both.ok());
  EXPECT_FLOAT_EQ(both->Process(row, {{1}}, {generated}).view({-1})[1].item<float>(), 0.75f);
  // A negative presence penalty favours what was generated.
  p.repetition_penalty = 1.0;
  p.frequency_penalty = 0;
  p.presence_penalty = -2;
  auto favour = Sampler::Create(p);
  ASSERT_TRUE(favour.ok());
  EXPECT_EQ((*favour->Next(row, {{}}, {{0}}))[0], 0);  // 3 + 2 = 5 beats id 1's 4
  // Generated ids outside the vocabulary: the ops' error, as the context's.
  EXPECT_FALSE(favour->Next(row, {{}}, {{7}}).ok());
  for (double bad : {-2.01, 2.5, std::nan("")}) {
    SamplingParams q;
    q.frequency_penalty = bad;
    EXPECT_EQ(Sampler::Create(q).status().code(), absl::StatusCode::kInvalidArgument) << bad;
    q.frequency_penalty = 0;
    q.presence_penalty = bad;
    EXPECT_EQ(Sampler::Create(q).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

// A context id outside the vocabulary is an error (libtorch's gather) when
// the penalty reads the context, in greedy and sampling alike.
TEST(Sampler, ContextIdOutsideTheVocabularyFails) {
  for (bool sample : {false, true}) {
    SamplingParams p;
    p.do_sample = sample;
    p.repetition_penalty = 1.2;
    auto s = Sampler::Create(p);
    ASSERT_TRUE(s.ok());
    EXPECT_FALSE(s->Next(Row({1.0f, 2.0f, 3.0f}), {{0, 3}}).ok()) << sample;
    EXPECT_FALSE(s->Next(Row({1.0f, 2.0f, 3.0f}), {{-1}}).ok()) << sample;
    // Without a penalty the context is not read (as Process).
    p.repetition_penalty = 1.0;
    auto plain = Sampler::Create(p);
    ASSERT_TRUE(plain.ok());
    EXPECT_TRUE(plain->Next(Row({1.0f, 2.0f, 3.0f}), {{0, 3, -1}}).ok()) << sample;
  }
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
