// The LLM engine on small random models: stop ids and cancellation, batched
// generations equal to one-at-a-time ones (greedy and seeded sampling),
// preemption under a tiny KV budget, prefix reuse, image rows, deadlines and
// the refusals of Submit.
#include "core/engine/llm_engine.h"

#include <ATen/ATen.h>

#include <cmath>
#include <thread>

#include "core/engine/llm_engine_torch.h"
#include "core/llm/causal_lm.h"
#include "core/llm/sampler.h"
#include "core/nn/torch_util.h"
#include "core/testing/test_device.h"
#include "core/vision/vision_model_torch.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace internvl {
namespace {

constexpr int64_t kImgContext = 7;

LlmConfig Config(LlmArch arch) {
  LlmConfig c;
  c.arch = arch;
  c.vocab_size = 64;
  c.hidden_size = 64;
  c.intermediate_size = 96;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.max_position_embeddings = 512;
  c.rope_theta = 10000;
  c.attention_bias = arch == LlmArch::kQwen2;
  return c;
}

std::unique_ptr<LlmEngine> MakeEngine(LlmEngineOptions o = {}, LlmArch arch = LlmArch::kQwen2, uint64_t seed = 21) {
  auto lm =
      llm::CausalLM::CreateRandom(Config(arch), testing::OnTestDevice(llm::Precision::Uniform(at::kFloat)), seed, 0.3);
  EXPECT_TRUE(lm.ok()) << lm.status();
  o.dtype = "fp32";
  o.threads = 2;
  o.device = testing::TestDevice();
  if (o.kv_cache_bytes == 0) o.kv_cache_bytes = int64_t{8} << 20;
  auto engine = CreateLlmEngine(std::move(*lm), o);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return std::move(*engine);
}

std::vector<int64_t> Prompt(int64_t len, int64_t salt) {
  std::vector<int64_t> p;
  for (int64_t i = 0; i < len; ++i) p.push_back(8 + (i * 13 + salt * 7) % 50);  // never kImgContext
  return p;
}

EngineRequest Request(std::vector<int64_t> prompt, int max_new = 12) {
  EngineRequest r;
  r.prompt_ids = std::move(prompt);
  r.img_context_id = kImgContext;
  r.settings.max_new_tokens = max_new;
  return r;
}

// Each request's token ids, generated one at a time.
void GenerateEachAlone(LlmEngine& engine, const std::vector<EngineRequest>& requests,
                       std::vector<std::vector<int>>* alone) {
  for (const auto& r : requests) {
    auto g = engine.Generate(r);
    ASSERT_TRUE(g.ok()) << g.status();
    alone->push_back(g->token_ids);
  }
}

TEST(LlmEngine, StopsAtStopIdKeepsItAndHonoursCancel) {
  auto engine = MakeEngine();
  auto free_run = engine->Generate(Request(Prompt(5, 1), 6));
  ASSERT_TRUE(free_run.ok()) << free_run.status();
  ASSERT_EQ(free_run->token_ids.size(), 6u);
  EXPECT_EQ(free_run->finish_reason, FinishReason::kLength);
  EXPECT_EQ(free_run->prompt_tokens, 5);
  EngineRequest stop = Request(Prompt(5, 1), 6);
  stop.stop_ids = {free_run->token_ids[2]};
  auto stopped = engine->Generate(stop);
  ASSERT_TRUE(stopped.ok());
  EXPECT_EQ(stopped->finish_reason, FinishReason::kStop);
  EXPECT_EQ(stopped->token_ids.back(), free_run->token_ids[2]);
  EXPECT_LE(stopped->token_ids.size(), 3u);
  EngineRequest cancel = Request(Prompt(5, 1), 6);
  int seen = 0;
  cancel.on_token = [&](int) { return ++seen < 2; };
  auto cancelled = engine->Generate(cancel);
  ASSERT_TRUE(cancelled.ok());
  EXPECT_EQ(cancelled->finish_reason, FinishReason::kCancelled);
  EXPECT_EQ(cancelled->token_ids.size(), 2u);
  EXPECT_EQ(engine->stats().kv_blocks_used, 0);
}

// Each sequence's tokens do not depend on what else is in the batch.
TEST(LlmEngine, ConcurrentGenerationsEqualOneAtATime) {
  for (LlmArch arch : {LlmArch::kQwen2, LlmArch::kInternLM2, LlmArch::kLlama}) {
    LlmEngineOptions o;
    o.max_batched_tokens = 32;  // long prompts are chunked and interleave with decodes
    o.max_num_seqs = 8;
    auto engine = MakeEngine(o, arch);
    std::vector<EngineRequest> requests;
    for (int i = 0; i < 6; ++i) {
      EngineRequest r = Request(Prompt(3 + 17 * i, i), 10 + i);
      if (i % 2 == 1) {  // seeded sampling
        r.settings.do_sample = true;
        r.settings.temperature = 0.8;
        r.settings.top_k = 10;
        r.settings.seed = 100 + i;
      }
      requests.push_back(r);
    }
    std::vector<std::vector<int>> alone;
    ASSERT_NO_FATAL_FAILURE(GenerateEachAlone(*engine, requests, &alone));
    std::vector<std::shared_ptr<GenerationHandle>> handles;
    for (const auto& r : requests) {
      auto h = engine->Submit(r);
      ASSERT_TRUE(h.ok()) << h.status();
      handles.push_back(*h);
    }
    for (size_t i = 0; i < handles.size(); ++i) {
      auto g = handles[i]->Wait();
      ASSERT_TRUE(g.ok()) << g.status();
      EXPECT_EQ(g->token_ids, alone[i]) << "request " << i << " arch " << static_cast<int>(arch);
    }
    EXPECT_EQ(engine->stats().kv_blocks_used, 0);
  }
}

// OpenAI's frequency and presence penalties count the generated tokens only
// (not the prompt): the engine's greedy ids equal a full-forward loop that
// passes the sampler the generated ids, and differ from the unpenalized ones.
TEST(LlmEngine, AdditivePenaltiesCountTheGeneratedTokens) {
  auto engine = MakeEngine();
  auto lm = llm::CausalLM::CreateRandom(Config(LlmArch::kQwen2),
                                        testing::OnTestDevice(llm::Precision::Uniform(at::kFloat)), 21, 0.3);
  ASSERT_TRUE(lm.ok()) << lm.status();
  const std::vector<int64_t> prompt = Prompt(9, 3);
  EngineRequest r = Request(prompt, 24);
  r.settings.frequency_penalty = 0.6;
  r.settings.presence_penalty = 1.1;
  auto penalized = engine->Generate(r);
  ASSERT_TRUE(penalized.ok()) << penalized.status();
  auto plain = engine->Generate(Request(prompt, 24));
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_NE(penalized->token_ids, plain->token_ids);
  llm::SamplingParams params;
  params.frequency_penalty = 0.6;
  params.presence_penalty = 1.1;
  auto sampler = llm::Sampler::Create(params);
  ASSERT_TRUE(sampler.ok());
  std::vector<int64_t> ids = prompt, generated;
  for (int t = 0; t < 24; ++t) {
    const at::Tensor input = at::tensor(ids, at::kLong).view({1, -1}).to(testing::TestDevice());
    auto embeds = (*lm)->Embed(input);
    ASSERT_TRUE(embeds.ok()) << embeds.status();
    auto logits = (*lm)->Forward(*embeds);  // [1, 1, V], the last position's
    ASSERT_TRUE(logits.ok()) << logits.status();
    auto next = sampler->Next(logits->reshape({1, -1}).to(at::kCPU).contiguous(), {{}}, {generated});
    ASSERT_TRUE(next.ok()) << next.status();
    ids.push_back((*next)[0]);
    generated.push_back((*next)[0]);
  }
  EXPECT_EQ(std::vector<int64_t>(penalized->token_ids.begin(), penalized->token_ids.end()), generated);
}

TEST(LlmEngine, TinyKvBudgetPreemptsAndRecomputesWithTheSameResult) {
  LlmEngineOptions roomy;
  auto reference = MakeEngine(roomy);
  LlmEngineOptions tight;
  tight.block_size = 4;
  // 24 blocks of 4 positions: each request needs up to 8, six run at once.
  tight.kv_cache_bytes = 24 * 2 * 2 * 2 * 4 * 16 * 4;
  tight.prefix_caching = false;
  auto engine = MakeEngine(tight);
  ASSERT_EQ(engine->stats().kv_blocks_total, 24);
  std::vector<EngineRequest> requests;
  for (int i = 0; i < 6; ++i) requests.push_back(Request(Prompt(10 + i, i), 20));
  std::vector<std::shared_ptr<GenerationHandle>> handles;
  for (const auto& r : requests) handles.push_back(*engine->Submit(r));
  int preemptions = 0;
  for (size_t i = 0; i < handles.size(); ++i) {
    auto g = handles[i]->Wait();
    ASSERT_TRUE(g.ok()) << g.status();
    auto alone = reference->Generate(requests[i]);
    ASSERT_TRUE(alone.ok());
    EXPECT_EQ(g->token_ids, alone->token_ids) << "request " << i;
    preemptions += g->preemptions;
  }
  EXPECT_GT(preemptions, 0);
  EXPECT_EQ(engine->stats().preemptions, preemptions);
  EXPECT_EQ(engine->stats().kv_blocks_used, 0);
  // One that could never fit is refused up front.
  EXPECT_EQ(engine->Submit(Request(Prompt(90, 0), 10)).status().code(), absl::StatusCode::kResourceExhausted);
}

TEST(LlmEngine, SecondTurnReusesTheFirstTurnsBlocks) {
  auto engine = MakeEngine();
  LlmEngineOptions off;
  off.prefix_caching = false;
  auto uncached = MakeEngine(off);
  std::vector<int64_t> turn1 = Prompt(40, 3);
  auto first = engine->Generate(Request(turn1, 8));
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(first->cached_prompt_tokens, 0);
  std::vector<int64_t> turn2 = turn1;
  turn2.insert(turn2.end(), first->token_ids.begin(), first->token_ids.end());
  for (int64_t t : Prompt(6, 9)) turn2.push_back(t);
  auto second = engine->Generate(Request(turn2, 8));
  ASSERT_TRUE(second.ok());
  // 40 prompt + 7 fed answer tokens computed: 2 full blocks of 16.
  EXPECT_EQ(second->cached_prompt_tokens, 32);
  auto plain = uncached->Generate(Request(turn2, 8));
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(second->token_ids, plain->token_ids);
  const EngineStats s = engine->stats();
  EXPECT_EQ(s.prefix_hit_tokens, 32);
  EXPECT_EQ(s.prefix_query_tokens, static_cast<int64_t>(turn1.size() + turn2.size()));
}

// A draw that fails (NaN logits: here from NaN image rows, as a model's own
// overflow would give) fails its request only; the sequences batched with it
// in that step go on to the same tokens as alone. Under the generic kernels
// (engine_llm_test_generic) this also checks that the batched decode
// attention reads no NaN from another sequence's blocks.
TEST(LlmEngine, AFailedDrawFailsOnlyItsOwnRequest) {
  auto engine = MakeEngine();
  std::vector<EngineRequest> requests;
  for (int i = 0; i < 3; ++i) {
    EngineRequest r = Request(Prompt(5 + 3 * i, i), 40);
    if (i == 1) {
      r.settings.do_sample = true;
      r.settings.seed = 4;
    }
    requests.push_back(r);
  }
  std::vector<std::vector<int>> alone;
  ASSERT_NO_FATAL_FAILURE(GenerateEachAlone(*engine, requests, &alone));
  std::vector<int64_t> prompt = Prompt(4, 7);
  for (int i = 0; i < 3; ++i) prompt.push_back(kImgContext);
  EngineRequest poisoned = Request(prompt, 5);
  poisoned.settings.do_sample = true;
  poisoned.image_embeddings = *TensorToHost(at::full({3, 64}, std::nanf("")));
  std::vector<std::shared_ptr<GenerationHandle>> handles;
  for (const auto& r : requests) handles.push_back(*engine->Submit(r));
  // Joins while the others decode (40 tokens each): its draw fails in a step
  // they share.
  auto bad = engine->Submit(poisoned);
  ASSERT_TRUE(bad.ok()) << bad.status();
  auto failed = (*bad)->Wait();
  ASSERT_FALSE(failed.ok());
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kInternal) << failed.status();
  for (size_t i = 0; i < handles.size(); ++i) {
    auto g = handles[i]->Wait();
    ASSERT_TRUE(g.ok()) << "request " << i << ": " << g.status();
    EXPECT_EQ(g->token_ids, alone[i]) << "request " << i;
  }
  EXPECT_EQ(engine->stats().kv_blocks_used, 0);
}

TEST(LlmEngine, ImageRowsReplaceContextTokensAndKeyThePrefix) {
  auto lm = llm::CausalLM::CreateRandom(Config(LlmArch::kQwen2),
                                        testing::OnTestDevice(llm::Precision::Uniform(at::kFloat)), 21, 0.3);
  ASSERT_TRUE(lm.ok());
  // The reference: one full forward over the text embeddings with the image
  // rows scattered in.
  std::vector<int64_t> prompt = Prompt(6, 1);
  for (int i = 0; i < 20; ++i) prompt.push_back(kImgContext);
  for (int64_t t : Prompt(5, 2)) prompt.push_back(t);
  const int64_t n = static_cast<int64_t>(prompt.size());
  at::Tensor rows = at::randn({20, 64});
  int64_t expected;
  {
    at::InferenceMode guard;
    at::Tensor ids = at::tensor(prompt, at::kLong).view({1, n});
    auto text = (*lm)->Embed(ids);
    ASSERT_TRUE(text.ok());
    auto merged = llm::ScatterImageEmbeddings(*text, ids, kImgContext, rows);
    ASSERT_TRUE(merged.ok());
    auto logits = (*lm)->Forward(*merged);
    ASSERT_TRUE(logits.ok());
    expected = logits->argmax(-1).item<int64_t>();
  }
  LlmEngineOptions o;
  o.dtype = "fp32";
  o.device = testing::TestDevice();
  o.kv_cache_bytes = int64_t{8} << 20;
  auto engine = CreateLlmEngine(std::move(*lm), o);
  ASSERT_TRUE(engine.ok());
  EngineRequest r = Request(prompt, 1);
  auto host = TensorToHost(rows);
  ASSERT_TRUE(host.ok());
  r.image_embeddings = *host;
  auto g = (*engine)->Generate(r);
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ(g->token_ids[0], expected);
  // The same ids with other image rows share only the text-only first block.
  EngineRequest other = r;
  other.image_embeddings = *TensorToHost(rows + 1);
  auto g2 = (*engine)->Generate(other);
  ASSERT_TRUE(g2.ok());
  EXPECT_EQ(g2->cached_prompt_tokens, 0);  // block 0 (16 positions) holds image rows too
  auto g3 = (*engine)->Generate(r);
  ASSERT_TRUE(g3.ok());
  EXPECT_EQ(g3->cached_prompt_tokens, 16);
  EXPECT_EQ(g3->token_ids, g->token_ids);
  // Wrong row counts and hidden sizes are refused.
  EngineRequest bad = r;
  bad.image_embeddings = *TensorToHost(rows.narrow(0, 0, 19));
  EXPECT_EQ((*engine)->Submit(bad).status().code(), absl::StatusCode::kInvalidArgument);
  bad.image_embeddings = *TensorToHost(at::randn({20, 32}));
  EXPECT_EQ((*engine)->Submit(bad).status().code(), absl::StatusCode::kInvalidArgument);
  // SCM: a block reaching the prompt's end (the 20 rows start at 6 of 31
  // positions), a client's huge value, and no image are refused before any
  // forward; a block that fits drops H/2 + 1 positions.
  for (int64_t high : {int64_t{25}, int64_t{1} << 40}) {
    EngineRequest scm = r;
    scm.scm_high_tokens = high;
    EXPECT_EQ((*engine)->Submit(scm).status().code(), absl::StatusCode::kInvalidArgument) << high;
  }
  EngineRequest text = Request(Prompt(6, 1), 1);
  text.scm_high_tokens = 4;
  EXPECT_EQ((*engine)->Submit(text).status().code(), absl::StatusCode::kInvalidArgument);
  EngineRequest scm = r;
  scm.scm_high_tokens = 20;
  auto compressed = (*engine)->Generate(scm);
  ASSERT_TRUE(compressed.ok()) << compressed.status();
  EXPECT_EQ(compressed->scm.length_before, n);
  EXPECT_EQ(compressed->prompt_tokens, n - 11);
  EXPECT_EQ(compressed->scm.kept_offsets.size(), 10u);
}

TEST(LlmEngine, RefusesBadRequests) {
  auto engine = MakeEngine();
  EXPECT_EQ(engine->Submit(Request({}, 4)).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(engine->Submit(Request({3, 64}, 4)).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(engine->Submit(Request({3, -1}, 4)).status().code(), absl::StatusCode::kInvalidArgument);
  EngineRequest r = Request({3, 4}, 4);
  r.settings.top_p = 0;
  EXPECT_EQ(engine->Submit(r).status().code(), absl::StatusCode::kInvalidArgument);
  r = Request({3, 4}, 0);
  EXPECT_EQ(engine->Submit(r).status().code(), absl::StatusCode::kInvalidArgument);
}

// --kv-cache-dtype bf16 under fp32 compute: twice the blocks for one budget;
// greedy text as with the fp32 cache on a prompt whose margins are not tiny
// (the logits move by the K/V rounding only); unknown values refused.
TEST(LlmEngine, Bf16KvCacheHoldsTwiceThePositions) {
  LlmEngineOptions o;
  o.kv_cache_bytes = int64_t{4} << 20;
  auto fp32 = MakeEngine(o);
  o.kv_cache_dtype = "bf16";
  auto bf16 = MakeEngine(o);
  EXPECT_EQ(bf16->stats().kv_blocks_total, 2 * fp32->stats().kv_blocks_total);
  EXPECT_EQ(fp32->kv_cache_dtype_name(), "fp32");
  EXPECT_EQ(bf16->kv_cache_dtype_name(), "bf16");
  auto a = fp32->Generate(Request(Prompt(40, 3), 8));
  auto b = bf16->Generate(Request(Prompt(40, 3), 8));
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(b->token_ids.size(), 8u);
  EXPECT_EQ(b->token_ids[0], a->token_ids[0]);
  o.kv_cache_dtype = "fp8";
  EXPECT_EQ(o.Validate().code(), absl::StatusCode::kInvalidArgument);
}

// --head-candidates: 0 (the head in one pass) and up; negative refused.
TEST(LlmEngine, HeadCandidatesMustNotBeNegative) {
  LlmEngineOptions o;
  o.head_candidates = 0;
  EXPECT_TRUE(o.Validate().ok());
  o.head_candidates = -1;
  EXPECT_EQ(o.Validate().code(), absl::StatusCode::kInvalidArgument);
}

// --kv-cache-dtype auto follows the weights: a bf16 model keeps a bf16 cache
// also where it computes in fp32 (as the official bf16 model and as CPUs
// with native bf16); fp32 keeps it exact there; a model computing in bf16
// refuses an fp32 cache.
TEST(LlmEngine, AutoKvCacheFollowsTheWeights) {
  auto engine = [](llm::Precision precision, const std::string& kv) -> absl::StatusOr<std::unique_ptr<LlmEngine>> {
    auto lm = llm::CausalLM::CreateRandom(Config(LlmArch::kQwen2), testing::OnTestDevice(precision), 21, 0.3);
    EXPECT_TRUE(lm.ok()) << lm.status();
    LlmEngineOptions o;
    o.kv_cache_bytes = int64_t{4} << 20;
    o.kv_cache_dtype = kv;
    o.device = testing::TestDevice();
    return CreateLlmEngine(std::move(*lm), o);
  };
  const llm::Precision bf16_weights{at::kFloat, at::kBFloat16};
  auto a = engine(bf16_weights, "auto");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ((*a)->kv_cache_dtype_name(), "bf16");
  auto exact = engine(bf16_weights, "fp32");
  ASSERT_TRUE(exact.ok()) << exact.status();
  EXPECT_EQ((*exact)->kv_cache_dtype_name(), "fp32");
  EXPECT_EQ((*exact)->stats().kv_blocks_total * 2, (*a)->stats().kv_blocks_total);
  auto fp32 = engine(llm::Precision::Uniform(at::kFloat), "auto");
  ASSERT_TRUE(fp32.ok()) << fp32.status();
  EXPECT_EQ((*fp32)->kv_cache_dtype_name(), "fp32");
  auto refused = engine(llm::Precision::Uniform(at::kBFloat16), "fp32");
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(refused.status().message()), ::testing::HasSubstr("kv_cache_dtype"));
}

TEST(LlmEngine, DeadlineAndHandleCancel) {
  auto engine = MakeEngine();
  EngineRequest late = Request(Prompt(8, 1), 50);
  late.deadline = absl::Now() - absl::Seconds(1);
  EXPECT_EQ(engine->Generate(late).status().code(), absl::StatusCode::kDeadlineExceeded);
  EngineRequest slow = Request(Prompt(8, 1), 400);
  std::atomic<int> tokens{0};
  slow.on_token = [&](int) {
    ++tokens;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    return true;
  };
  auto h = engine->Submit(slow);
  ASSERT_TRUE(h.ok());
  while (tokens.load() < 3) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  (*h)->Cancel();
  auto g = (*h)->Wait();
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(g->finish_reason, FinishReason::kCancelled);
  EXPECT_LT(g->token_ids.size(), 400u);
  EXPECT_EQ(engine->stats().kv_blocks_used, 0);
}

TEST(LlmEngine, FullQueueIsResourceExhaustedAndShutdownIsUnavailable) {
  LlmEngineOptions o;
  o.max_num_seqs = 1;
  o.max_batched_tokens = 8;
  o.max_waiting = 2;
  auto engine = MakeEngine(o);
  std::atomic<bool> release{false};
  EngineRequest blocker = Request(Prompt(4, 0), 100);
  blocker.on_token = [&](int) {
    while (!release.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    return true;
  };
  auto running = engine->Submit(blocker);
  ASSERT_TRUE(running.ok());
  while (engine->stats().running == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  std::vector<std::shared_ptr<GenerationHandle>> queued;
  for (int i = 0; i < 2; ++i) queued.push_back(*engine->Submit(Request(Prompt(4, i), 4)));
  EXPECT_EQ(engine->Submit(Request(Prompt(4, 9), 4)).status().code(), absl::StatusCode::kResourceExhausted);
  release.store(true);
  engine.reset();  // shutdown: what is left ends UNAVAILABLE (or finished first)
  for (auto& h : queued) {
    auto r = h->Wait();
    EXPECT_TRUE(r.ok() || r.status().code() == absl::StatusCode::kUnavailable) << r.status();
  }
  auto r = (*running)->Wait();
  EXPECT_TRUE(r.ok() || r.status().code() == absl::StatusCode::kUnavailable) << r.status();
}

}  // namespace
}  // namespace internvl
