// CausalLM::ForwardPaged against the plain full forward: sequences fed in
// chunks and decode steps, batched together, their blocks scattered through
// the pool, shared prefix blocks, and the general (non-kernel) path.
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <numeric>
#include <set>

#include "core/llm/causal_lm.h"
#include "core/llm/gemv.h"
#include "core/llm/modules.h"
#include "core/llm/paged_attention.h"
#include "core/llm/quant.h"
#include "core/nn/device.h"
#include "gtest/gtest.h"

namespace internvl::llm {
namespace {

LlmConfig Config(LlmArch arch, int64_t max_pos = 256) {
  LlmConfig c;
  c.arch = arch;
  c.vocab_size = 50;
  c.hidden_size = 64;
  c.intermediate_size = 96;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.max_position_embeddings = max_pos;
  c.rope_theta = 10000;
  c.attention_bias = arch == LlmArch::kQwen2;
  return c;
}

float MaxDiff(const at::Tensor& a, const at::Tensor& b) { return (a - b).abs().max().item<float>(); }

// Feeds each sequence of `xs` ([T_i, H] embeddings) through ForwardPaged in
// the given chunk schedule (per step, tokens per sequence; 0 = idle), all
// sequences of a step batched; returns each sequence's logits per fed
// position [T_i, V].
std::vector<at::Tensor> RunPaged(CausalLM& lm, PagedKVPool& pool, const std::vector<at::Tensor>& xs,
                                 const std::vector<std::vector<int64_t>>& schedule,
                                 const std::vector<std::vector<int32_t>>& tables) {
  const size_t n = xs.size();
  std::vector<int64_t> done(n, 0);
  std::vector<std::vector<at::Tensor>> logits(n);
  std::vector<RotaryEmbedding> ropes;
  for (size_t i = 0; i < n; ++i) ropes.push_back(lm.NewRotary());
  for (const auto& step : schedule) {
    std::vector<PagedSeq> seqs;
    std::vector<const RotaryEmbedding*> rope_ptrs;
    std::vector<at::Tensor> rows;
    std::vector<size_t> who;
    for (size_t i = 0; i < n; ++i) {
      if (step[i] == 0) continue;
      PagedSeq s;
      s.start = done[i];
      s.num_new = step[i];
      s.blocks = tables[i];
      s.logits = true;
      ropes[i].Observe(xs[i].size(0));
      rows.push_back(xs[i].narrow(0, done[i], step[i]));
      seqs.push_back(s);
      rope_ptrs.push_back(&ropes[i]);
      who.push_back(i);
    }
    // Per chunk, only the last position's logits come back; feed the chunk's
    // positions one at a time when a test wants them all.
    auto out = lm.ForwardPaged(at::cat(rows, 0), seqs, rope_ptrs, pool);
    EXPECT_TRUE(out.ok()) << out.status();
    if (!out.ok()) return {};
    for (size_t k = 0; k < who.size(); ++k) {
      logits[who[k]].push_back(out->select(0, static_cast<int64_t>(k)).unsqueeze(0));
      done[who[k]] += step[who[k]];
    }
  }
  std::vector<at::Tensor> result;
  for (auto& l : logits) result.push_back(at::cat(l, 0));
  return result;
}

// The float and quantized kernel pairs the fused decode step runs on this
// CPU: avx2, and avx512bf16 with avx512vnni and with avx512bf16 (int8
// weights widened from QuantWideMinRows() sequences) where they are there.
std::vector<std::pair<GemvKernel, QuantKernel>> FusedStepKernels() {
  std::vector<std::pair<GemvKernel, QuantKernel>> kernels = {{GemvKernel::kAvx2, QuantKernel::kAvx2}};
  if (GemvKernelSupported(GemvKernel::kAvx512Bf16)) {
    for (QuantKernel q : {QuantKernel::kAvx512Vnni, QuantKernel::kAvx512Bf16}) {
      if (QuantKernelSupported(q)) kernels.push_back({GemvKernel::kAvx512Bf16, q});
    }
  }
  return kernels;
}

class PagedForward : public ::testing::TestWithParam<LlmArch> {};

TEST_P(PagedForward, ChunkedBatchedSequencesMatchTheFullForward) {
  at::InferenceMode guard;
  auto lm = CausalLM::CreateRandom(Config(GetParam()), at::kFloat, 11, 0.2);
  ASSERT_TRUE(lm.ok());
  const int bs = 4;
  auto pool = (*lm)->NewPagedPool(32, bs);
  ASSERT_TRUE(pool.ok());
  // Two sequences of 23 and 13 tokens; blocks interleaved and out of order.
  std::vector<at::Tensor> xs = {at::randn({23, 64}), at::randn({13, 64})};
  std::vector<std::vector<int32_t>> tables = {{9, 3, 17, 1, 30, 22}, {2, 31, 8, 5}};
  // A: chunks 7, 9, then decode steps; B joins later, prefill 13 at once.
  std::vector<std::vector<int64_t>> schedule = {{7, 0}, {9, 13}, {1, 0}, {1, 0}, {1, 0},
                                                {1, 0}, {1, 0},  {1, 0}, {1, 0}};
  auto got = RunPaged(**lm, **pool, xs, schedule, tables);
  ASSERT_EQ(got.size(), 2u);
  // Expected: logits at the last position of each step's chunk.
  ForwardOptions all;
  all.logits = LogitsMode::kAll;
  for (size_t i = 0; i < 2; ++i) {
    auto full = (*lm)->Forward(xs[i].unsqueeze(0), all);
    ASSERT_TRUE(full.ok());
    std::vector<int64_t> ends;
    int64_t pos = 0;
    for (const auto& step : schedule) {
      if (step[i] == 0) continue;
      pos += step[i];
      ends.push_back(pos - 1);
    }
    at::Tensor expected = (*full)[0].index_select(0, at::tensor(ends, at::kLong));
    EXPECT_LT(MaxDiff(got[i], expected), 2e-5) << "sequence " << i;
  }
}

TEST_P(PagedForward, GeneralPathMatchesTheDecodeKernel) {
  at::InferenceMode guard;
  auto lm = CausalLM::CreateRandom(Config(GetParam()), at::kFloat, 12, 0.2);
  ASSERT_TRUE(lm.ok());
  auto pool = (*lm)->NewPagedPool(16, 4);
  ASSERT_TRUE(pool.ok());
  std::vector<at::Tensor> xs = {at::randn({21, 64})};
  std::vector<std::vector<int64_t>> schedule = {{17}, {1}, {1}, {1}, {1}};
  std::vector<std::vector<int32_t>> tables = {{4, 0, 7, 1, 12, 3}};
  auto fast = RunPaged(**lm, **pool, xs, schedule, tables);
  SetFastLinearEnabled(false);
  auto slow = RunPaged(**lm, **pool, xs, schedule, tables);
  SetFastLinearEnabled(true);
  ASSERT_EQ(fast.size(), 1u);
  ASSERT_EQ(slow.size(), 1u);
  EXPECT_LT(MaxDiff(fast[0], slow[0]), 2e-5);
}

// --kv-cache-dtype bf16 under fp32 compute: K/V stored rounded to bf16, read
// back exactly by the decode kernel and by the general path alike; the
// logits move by the rounding only.
TEST_P(PagedForward, Bf16CacheUnderFp32ComputeRoundsOnlyTheStoredKv) {
  at::InferenceMode guard;
  at::manual_seed(14);
  auto lm = CausalLM::CreateRandom(Config(GetParam()), at::kFloat, 14, 0.2);
  ASSERT_TRUE(lm.ok());
  auto pool_f = (*lm)->NewPagedPool(16, 4);
  auto pool_b = (*lm)->NewPagedPool(16, 4, at::kBFloat16);
  ASSERT_TRUE(pool_f.ok() && pool_b.ok());
  EXPECT_EQ((*pool_b)->dtype(), at::kBFloat16);
  EXPECT_EQ((*pool_b)->key(0).nbytes() * 2, (*pool_f)->key(0).nbytes());
  std::vector<at::Tensor> xs = {at::randn({21, 64})};
  std::vector<std::vector<int64_t>> schedule = {{9}, {8}, {1}, {1}, {1}, {1}};
  std::vector<std::vector<int32_t>> tables = {{4, 0, 7, 1, 12, 3}};
  auto exact = RunPaged(**lm, **pool_f, xs, schedule, tables);
  auto fast = RunPaged(**lm, **pool_b, xs, schedule, tables);
  SetFastLinearEnabled(false);
  auto slow = RunPaged(**lm, **pool_b, xs, schedule, tables);
  SetFastLinearEnabled(true);
  ASSERT_EQ(exact.size(), 1u);
  ASSERT_EQ(fast.size(), 1u);
  ASSERT_EQ(slow.size(), 1u);
  EXPECT_EQ(fast[0].scalar_type(), at::kFloat);
  const float scale = exact[0].abs().max().item<float>(), diff = MaxDiff(fast[0], exact[0]);
  // (Not to 2e-5 as over an fp32 cache: the two paths' linear layers round
  // differently in fp32, and a K/V element near a bf16 rounding boundary then
  // lands one bf16 step apart.)
  EXPECT_LT(MaxDiff(fast[0], slow[0]), scale * 2e-3) << "the decode kernel and the general path read the cache alike";
  std::printf("[kv bf16] logits max error %.3g of their scale %.3g (rel %.2e)\n", diff, scale, diff / scale);
  EXPECT_GT(diff, 0.0f) << "the cache was not bf16";
  EXPECT_LT(diff, scale * 2e-2f);  // 2x the official bf16 model's worst first-step error (1.02%)
  // Other pairings are refused.
  EXPECT_FALSE((*lm)->NewPagedPool(4, 4, at::kHalf).ok());
  auto lm_b = CausalLM::CreateRandom(Config(GetParam()), at::kBFloat16, 14, 0.2);
  ASSERT_TRUE(lm_b.ok());
  EXPECT_FALSE((*lm_b)->NewPagedPool(4, 4, at::kFloat).ok());
  EXPECT_TRUE((*lm_b)->NewPagedPool(4, 4, at::kBFloat16).ok());
}

TEST_P(PagedForward, SharedPrefixBlocksAreReadNotRewritten) {
  at::InferenceMode guard;
  auto lm = CausalLM::CreateRandom(Config(GetParam()), at::kFloat, 13, 0.2);
  ASSERT_TRUE(lm.ok());
  auto pool = (*lm)->NewPagedPool(16, 4);
  ASSERT_TRUE(pool.ok());
  // Sequence A computes 8 tokens into blocks {5, 6}; B has the same first 8
  // tokens, starts at 8 over A's blocks, then its own.
  at::Tensor prefix = at::randn({8, 64});
  at::Tensor a = at::cat({prefix, at::randn({3, 64})}, 0);
  at::Tensor b = at::cat({prefix, at::randn({5, 64})}, 0);
  std::vector<RotaryEmbedding> ropes = {(*lm)->NewRotary(), (*lm)->NewRotary()};
  PagedSeq sa{0, 11, {5, 6, 7}, true};
  ASSERT_TRUE((*lm)->ForwardPaged(a, {sa}, {&ropes[0]}, **pool).ok());
  PagedSeq sb{8, 5, {5, 6, 9, 10}, true};
  auto got = (*lm)->ForwardPaged(b.narrow(0, 8, 5), {sb}, {&ropes[1]}, **pool);
  ASSERT_TRUE(got.ok()) << got.status();
  auto full = (*lm)->Forward(b.unsqueeze(0));
  ASSERT_TRUE(full.ok());
  EXPECT_LT(MaxDiff(*got, *full), 2e-5);
}

TEST_P(PagedForward, DynamicNtkIsPerSequence) {
  at::InferenceMode guard;
  // max_position_embeddings 8: a 12-token sequence enlarges its base, a
  // 5-token one batched with it must not.
  LlmConfig c = Config(GetParam(), 8);
  c.rope_scaling = RopeScaling{"dynamic", 2.0};
  auto lm = CausalLM::CreateRandom(c, at::kFloat, 14, 0.2);
  ASSERT_TRUE(lm.ok());
  auto pool = (*lm)->NewPagedPool(16, 4);
  ASSERT_TRUE(pool.ok());
  std::vector<at::Tensor> xs = {at::randn({12, 64}), at::randn({5, 64})};
  auto got = RunPaged(**lm, **pool, xs, {{12, 5}}, {{0, 1, 2}, {3, 4}});
  ASSERT_EQ(got.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    // A fresh model per sequence: the reference's state in a new process.
    auto fresh = CausalLM::CreateRandom(c, at::kFloat, 14, 0.2);
    ASSERT_TRUE(fresh.ok());
    auto full = (*fresh)->Forward(xs[i].unsqueeze(0));
    ASSERT_TRUE(full.ok());
    EXPECT_LT(MaxDiff(got[i], *full), 2e-5) << "sequence " << i;
  }
}

TEST_P(PagedForward, RejectsInconsistentInputs) {
  at::InferenceMode guard;
  auto lm = CausalLM::CreateRandom(Config(GetParam()), at::kFloat, 15, 0.2);
  ASSERT_TRUE(lm.ok());
  auto pool = (*lm)->NewPagedPool(4, 4);
  ASSERT_TRUE(pool.ok());
  RotaryEmbedding rope = (*lm)->NewRotary();
  PagedSeq too_few_blocks{0, 9, {0, 1}, true};
  EXPECT_EQ((*lm)->ForwardPaged(at::randn({9, 64}), {too_few_blocks}, {&rope}, **pool).status().code(),
            absl::StatusCode::kInvalidArgument);
  PagedSeq outside{0, 3, {7}, true};
  EXPECT_EQ((*lm)->ForwardPaged(at::randn({3, 64}), {outside}, {&rope}, **pool).status().code(),
            absl::StatusCode::kInvalidArgument);
  PagedSeq ok{0, 3, {1}, true};
  EXPECT_EQ((*lm)->ForwardPaged(at::randn({4, 64}), {ok}, {&rope}, **pool).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// The fused decode step (DecoderLayerImpl::DecodeInPlace: no libtorch op
// between the products) against the modules' forward, bit for bit: three
// sequences of different lengths decoding together after chunked prefills;
// bf16 activations (bf16 weights and cache), fp32 ones (fp32 weights; bf16
// weights with a bf16 or an fp32 cache, as `--dtype bf16` runs without
// native bf16 matmuls); float, int8 and 4-bit products; every kernel this
// CPU runs. An MLP wide enough (2176) that the bf16 SwiGLU is split between
// the threads.
TEST_P(PagedForward, FusedDecodeStepIsTheForwardBitForBit) {
  if (!CpuHasAvx2Fma() || GenericKernels()) GTEST_SKIP() << "the fused decode step runs the project's AVX2 kernels";
  at::InferenceMode guard;
  LlmConfig c = Config(GetParam());
  c.hidden_size = 128;
  c.intermediate_size = 2176;
  const std::vector<std::pair<GemvKernel, QuantKernel>> kernels = FusedStepKernels();
  // 19, 15 and 24 positions: prefilled in chunks of up to 12, then decoded
  // one token a step while each has tokens left (6 steps, the last of one).
  std::vector<at::Tensor> xs = {at::randn({19, 128}), at::randn({15, 128}), at::randn({24, 128})};
  std::vector<std::vector<int64_t>> schedule = {{8, 9, 12}, {6, 0, 8}};
  for (int step = 0; step < 6; ++step) schedule.push_back({step < 5 ? 1 : 0, 1, step < 4 ? 1 : 0});
  std::vector<std::vector<int32_t>> tables = {{3, 9, 0, 14, 6, 11, 1}, {7, 2, 12, 5, 17}, {4, 15, 8, 10, 13, 16, 18}};
  struct Case {
    at::ScalarType compute, weights, cache;
  };
  const Case cases[] = {{at::kBFloat16, at::kBFloat16, at::kBFloat16},
                        {at::kFloat, at::kFloat, at::kFloat},
                        {at::kFloat, at::kBFloat16, at::kBFloat16},
                        {at::kFloat, at::kBFloat16, at::kFloat}};
  for (const Case& k : cases) {
    for (Quantization q : {Quantization::kNone, Quantization::kInt8, Quantization::kInt4}) {
      Precision p{k.compute, k.weights};
      p.quantize = q;
      auto lm = CausalLM::CreateRandom(c, p, 21, 0.2);
      ASSERT_TRUE(lm.ok()) << lm.status();
      auto pool = (*lm)->NewPagedPool(20, 4, k.cache);
      ASSERT_TRUE(pool.ok()) << pool.status();
      for (const auto& [gemv_kernel, quant_kernel] : kernels) {
        SCOPED_TRACE(std::string(GemvKernelName(gemv_kernel)) + ", compute " + c10::toString(k.compute) + ", weights " +
                     c10::toString(k.weights) + ", cache " + c10::toString(k.cache) + ", quantization " +
                     std::to_string(static_cast<int>(q)));
        ASSERT_TRUE(ForceGemvKernel(gemv_kernel));
        ASSERT_TRUE(ForceQuantKernel(quant_kernel));
        // Every slot NaN before each run: a position one path forgot to
        // write cannot read the other's value.
        auto poison = [&] {
          for (int l = 0; l < (*pool)->num_layers(); ++l) {
            (*pool)->key(l).fill_(NAN);
            (*pool)->value(l).fill_(NAN);
          }
        };
        const int64_t before = FusedDecodeLayers();
        poison();
        auto fused = RunPaged(**lm, **pool, xs, schedule, tables);
        const int64_t layers = FusedDecodeLayers() - before;
        SetFusedDecodeEnabled(false);
        poison();
        auto forward = RunPaged(**lm, **pool, xs, schedule, tables);
        SetFusedDecodeEnabled(true);
        EXPECT_EQ(FusedDecodeLayers() - before, layers);
        EXPECT_EQ(layers, 12);  // 6 steps x 2 layers
        ASSERT_EQ(fused.size(), 3u);
        ASSERT_EQ(forward.size(), 3u);
        for (size_t i = 0; i < 3; ++i) EXPECT_TRUE(at::equal(fused[i], forward[i])) << "sequence " << i;
      }
      ForceGemvKernel(std::nullopt);
      ForceQuantKernel(std::nullopt);
    }
  }
}

// Steps of 17-32 sequences (the decode kernels' limit was 16): 29 and 32 (the
// engine's default --max-num-seqs) decoding together run the fused step
// (every product through the decode kernels) and give the forward's bits.
TEST_P(PagedForward, FusedDecodeStepOfUpTo32Sequences) {
  if (!CpuHasAvx2Fma() || GenericKernels()) GTEST_SKIP() << "the fused decode step runs the project's AVX2 kernels";
  at::InferenceMode guard;
  LlmConfig c = Config(GetParam());
  c.hidden_size = 128;
  c.intermediate_size = 256;
  const std::vector<std::pair<GemvKernel, QuantKernel>> kernels = FusedStepKernels();
  for (const int64_t n : {int64_t{29}, kMaxFastLinearRows}) {
    // Each sequence: 3 positions prefilled together, then 2 decode steps of
    // all n; two blocks of 4 each, interleaved through the pool.
    std::vector<at::Tensor> xs;
    std::vector<std::vector<int32_t>> tables;
    for (int64_t i = 0; i < n; ++i) {
      xs.push_back(at::randn({5, 128}));
      tables.push_back({static_cast<int32_t>(2 * i + 1), static_cast<int32_t>(2 * i)});
    }
    const std::vector<std::vector<int64_t>> schedule = {std::vector<int64_t>(n, 3), std::vector<int64_t>(n, 1),
                                                        std::vector<int64_t>(n, 1)};
    for (at::ScalarType compute : {at::kBFloat16, at::kFloat}) {
      for (Quantization q : {Quantization::kNone, Quantization::kInt8}) {
        Precision p{compute, at::kBFloat16};
        p.quantize = q;
        auto lm = CausalLM::CreateRandom(c, p, 23, 0.2);
        ASSERT_TRUE(lm.ok()) << lm.status();
        auto pool = (*lm)->NewPagedPool(2 * n, 4, at::kBFloat16);
        ASSERT_TRUE(pool.ok()) << pool.status();
        for (const auto& [gemv_kernel, quant_kernel] : kernels) {
          SCOPED_TRACE(std::string(GemvKernelName(gemv_kernel)) + ", " + std::to_string(n) + " sequences, compute " +
                       c10::toString(compute) + ", quantization " + std::to_string(static_cast<int>(q)));
          ASSERT_TRUE(ForceGemvKernel(gemv_kernel));
          ASSERT_TRUE(ForceQuantKernel(quant_kernel));
          // (bf16 products on the avx2 kernel of a native-bf16 CPU stop at
          // 4 rows: those steps go through the forward, fused or not.)
          const bool fusable = q != Quantization::kNone || FastLinearMaxRows(compute, at::kBFloat16) >= n;
          const int64_t before = FusedDecodeLayers();
          auto fused = RunPaged(**lm, **pool, xs, schedule, tables);
          EXPECT_EQ(FusedDecodeLayers() - before, fusable ? 4 : 0);  // 2 steps x 2 layers
          SetFusedDecodeEnabled(false);
          auto forward = RunPaged(**lm, **pool, xs, schedule, tables);
          SetFusedDecodeEnabled(true);
          ASSERT_EQ(fused.size(), static_cast<size_t>(n));
          ASSERT_EQ(forward.size(), static_cast<size_t>(n));
          for (int64_t i = 0; i < n; ++i) EXPECT_TRUE(at::equal(fused[i], forward[i])) << "sequence " << i;
        }
        ForceGemvKernel(std::nullopt);
        ForceQuantKernel(std::nullopt);
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Archs, PagedForward, ::testing::Values(LlmArch::kQwen2, LlmArch::kInternLM2, LlmArch::kLlama));

}  // namespace
}  // namespace internvl::llm

namespace internvl::llm {
namespace {

// The CPU pool stores each KV head's blocks one after another (the decode
// kernel streams one head's consecutive blocks), seen in the pool's shape; a
// block of one head stays one run of rows. Off the CPU kernels its blocks
// are zeroed (the batched path reads whole blocks).
TEST(PagedKVPool, CpuStorageIsKvHeadMajorInThePoolsShape) {
  const LlmConfig config = Config(LlmArch::kQwen2, 4096);
  for (bool generic : {false, true}) {
    const bool was = GenericKernels();
    ForceGenericKernels(generic);
    auto pool = PagedKVPool::Create(config, 6, 4, at::kBFloat16);
    ForceGenericKernels(was);
    ASSERT_TRUE(pool.ok()) << pool.status();
    for (const at::Tensor* t : {&(*pool)->key(1), &(*pool)->value(1)}) {
      const int64_t kv = config.num_key_value_heads, d = config.head_dim();
      EXPECT_EQ(t->sizes(), (std::vector<int64_t>{6, kv, 4, d}));
      EXPECT_TRUE(t->transpose(0, 1).is_contiguous());
      EXPECT_EQ(t->stride(0), 4 * d);
      if (generic) {
        EXPECT_EQ(t->count_nonzero().item<int64_t>(), 0);
      }
    }
    // Every layer's keys and values in one allocation (huge pages whatever
    // the pool's size: paged_kv.cc), none overlapping another.
    const at::Storage storage = (*pool)->key(0).storage();
    std::set<const void*> starts;
    for (int l = 0; l < (*pool)->num_layers(); ++l) {
      for (const at::Tensor* t : {&(*pool)->key(l), &(*pool)->value(l)}) {
        EXPECT_TRUE(t->storage().is_alias_of(storage)) << "layer " << l;
        starts.insert(t->data_ptr());
      }
    }
    EXPECT_EQ(starts.size(), static_cast<size_t>(2 * (*pool)->num_layers()));
    EXPECT_EQ(static_cast<int64_t>(storage.nbytes()), (*pool)->nbytes());
  }
}

// Pools beyond any memory are refused with RESOURCE_EXHAUSTED, whether their
// byte count overflows or the allocation fails; nothing else breaks.
TEST(PagedKVPool, HostileSizesAreResourceExhausted) {
  const LlmConfig config = Config(LlmArch::kQwen2, 4096);
  // Also a count whose bytes wrap around 2^64 to 4 MiB (the bytes per block
  // are a power of two here): a small allocation under a pool's shape.
  const int64_t per_block = PagedKVPool::BytesPerBlock(config, 16, at::kBFloat16);
  ASSERT_EQ(per_block & (per_block - 1), 0) << per_block;
  int shift = 0;
  while ((int64_t{1} << shift) < per_block) ++shift;
  const int64_t wraps = static_cast<int64_t>((uint64_t{1} << (64 - shift)) + (uint64_t{4} << 20) / per_block);
  for (int64_t blocks :
       {std::numeric_limits<int64_t>::max(), std::numeric_limits<int64_t>::max() / 3, int64_t{1} << 40, wraps}) {
    auto pool = PagedKVPool::Create(config, blocks, 16, at::kBFloat16);
    ASSERT_FALSE(pool.ok()) << blocks;
    EXPECT_EQ(pool.status().code(), absl::StatusCode::kResourceExhausted) << pool.status();
    // Counts whose bytes overflow are refused before any allocation.
    const bool overflows = blocks > std::numeric_limits<int64_t>::max() / per_block;
    EXPECT_EQ(overflows, pool.status().message().find("beyond any memory") != absl::string_view::npos) << pool.status();
  }
  EXPECT_TRUE(PagedKVPool::Create(config, 8, 16, at::kBFloat16).ok());
  // A config whose one block's bytes overflow (layers x KV width x block
  // size): saturated, and refused before any allocation.
  LlmConfig absurd = config;
  absurd.num_hidden_layers = std::numeric_limits<int>::max();
  EXPECT_EQ(PagedKVPool::BytesPerBlock(absurd, std::numeric_limits<int>::max(), at::kFloat),
            std::numeric_limits<int64_t>::max());
  auto pool = PagedKVPool::Create(absurd, 2, std::numeric_limits<int>::max(), at::kFloat);
  ASSERT_FALSE(pool.ok());
  EXPECT_EQ(pool.status().code(), absl::StatusCode::kResourceExhausted) << pool.status();
  EXPECT_NE(pool.status().message().find("beyond any memory"), absl::string_view::npos) << pool.status();
}

// Off the CPU kernels, decoding sequences are grouped by length so that the
// padded key gathers stay under twice what is really read: one long
// sequence among short ones is not a batch padded to its length.
TEST(PagedDecodeGroups, PaddingStaysUnderTwiceTheRealPositions) {
  const bool was = GenericKernels();
  ForceGenericKernels(true);
  const int bs = 16;
  auto pool = PagedKVPool::Create(Config(LlmArch::kQwen2, 4096), 512, bs, at::kFloat);
  ASSERT_TRUE(pool.ok()) << pool.status();
  std::vector<PagedSeq> seqs;
  int32_t next = 0;
  for (int64_t len : {4000, 17, 2600, 1, 9, 600, 300}) {
    PagedSeq s;
    s.start = len - 1;
    s.num_new = 1;
    for (int64_t b = 0; b < (len + bs - 1) / bs; ++b) s.blocks.push_back(next++);
    seqs.push_back(s);
  }
  PagedSeq prefill;  // not a decode: never grouped
  prefill.start = 0;
  prefill.num_new = 5;
  prefill.blocks = {next++};
  seqs.push_back(prefill);
  PagedContext ctx = MakePagedContext(**pool, seqs);
  int64_t padded = 0, real = 0;
  std::vector<int> seen(seqs.size(), 0);
  for (const auto& g : ctx.decode_groups) {
    padded += g.blocks.size(0) * g.blocks.size(1) * bs;
    int64_t longest = 0;
    for (int64_t i : g.seqs) longest = std::max(longest, seqs[i].start + 1);
    for (size_t j = 0; j < g.seqs.size(); ++j) {
      const int64_t i = g.seqs[j];
      ++seen[i];
      real += (seqs[i].start + 1 + bs - 1) / bs * bs;
      EXPECT_GE(2 * (seqs[i].start + 1), longest) << "sequence " << i;
      EXPECT_EQ(g.masked[j].logical_not().sum().item<int64_t>(), seqs[i].start + 1) << "sequence " << i;
      EXPECT_EQ(g.rows[j].item<int64_t>(), ctx.row_begin[i]);
    }
  }
  EXPECT_EQ(std::accumulate(seen.begin(), seen.end(), 0), 7);
  EXPECT_EQ(seen.back(), 0);
  EXPECT_LE(padded, 2 * real);
  EXPECT_EQ(ctx.decode_groups.size(), 4u);  // {4000, 2600}, {600, 300}, {17, 9}, {1}
  ForceGenericKernels(was);
}

}  // namespace
}  // namespace internvl::llm
