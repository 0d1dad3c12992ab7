#include "core/llm/causal_lm.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <string>
#include <vector>

#include "core/llm/gemv.h"
#include "core/llm/modules.h"
#include "core/nn/activation.h"
#include "gtest/gtest.h"

namespace internvl::llm {
namespace {

LlmConfig TinyConfig(LlmArch arch) {
  LlmConfig c;
  c.arch = arch;
  c.vocab_size = 50;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.max_position_embeddings = 64;
  c.rope_theta = 10000;
  c.attention_bias = arch == LlmArch::kQwen2;
  return c;
}

TEST(InternLM2, FusedWqkvIsGroupedPerKvHead) {
  at::InferenceMode guard;
  auto internlm = CausalLM::CreateRandom(TinyConfig(LlmArch::kInternLM2), at::kFloat, 1, 0.2);
  auto llama = CausalLM::CreateRandom(TinyConfig(LlmArch::kLlama), at::kFloat, 2, 0.2);
  ASSERT_TRUE(internlm.ok() && llama.ok());
  // Copy InternLM2's weights into the LLaMA model, splitting wqkv with the
  // grouped layout [kv head j: q(j*G..j*G+G-1), k_j, v_j].
  auto& src = (*internlm)->module()->model;
  auto& dst = (*llama)->module()->model;
  const int64_t d = 8, groups = 2, kv = 2;
  dst->embed->weight.copy_(src->embed->weight);
  dst->norm->weight.copy_(src->norm->weight);
  (*llama)->module()->head->weight.copy_((*internlm)->module()->head->weight);
  for (size_t l = 0; l < src->typed_layers.size(); ++l) {
    auto* s = static_cast<InternLM2DecoderLayerImpl*>(src->typed_layers[l].get());
    auto* t = static_cast<LlamaDecoderLayerImpl*>(dst->typed_layers[l].get());
    at::Tensor w = s->attention->wqkv->weight.view({kv, groups + 2, d, 32});
    t->self_attn->q_proj->weight.copy_(w.narrow(1, 0, groups).reshape({kv * groups * d, 32}));
    t->self_attn->k_proj->weight.copy_(w.select(1, groups).reshape({kv * d, 32}));
    t->self_attn->v_proj->weight.copy_(w.select(1, groups + 1).reshape({kv * d, 32}));
    t->self_attn->o_proj->weight.copy_(s->attention->wo->weight);
    t->mlp->gate_proj->weight.copy_(s->feed_forward->w1->weight);
    t->mlp->up_proj->weight.copy_(s->feed_forward->w3->weight);
    t->mlp->down_proj->weight.copy_(s->feed_forward->w2->weight);
    t->input_layernorm->weight.copy_(s->attention_norm->weight);
    t->post_attention_layernorm->weight.copy_(s->ffn_norm->weight);
  }
  const at::Tensor x = at::randn({1, 7, 32});
  auto a = (*internlm)->Forward(x);
  auto b = (*llama)->Forward(x);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_LT((*a - *b).abs().max().item<float>(), 1e-5);
}

TEST(CausalLM, FallsBackToSeparateProjectionsWhenFusedStorageIsReplaced) {
  // Built outside inference mode so that grad-mode forwards can use it.
  auto lm = CausalLM::CreateRandom(TinyConfig(LlmArch::kQwen2), at::kFloat, 4, 0.2);
  ASSERT_TRUE(lm.ok());
  auto* layer = static_cast<LlamaDecoderLayerImpl*>((*lm)->module()->model->typed_layers[0].get());
  const at::Tensor x = at::randn({1, 3, 32});
  // A reload replaces .data: the new values must be used.
  layer->self_attn->k_proj->weight.set_data(layer->self_attn->k_proj->weight.clone() * 2);
  layer->mlp->up_proj->weight.set_data(layer->mlp->up_proj->weight.clone() * 2);
  at::Tensor fast;
  {
    at::InferenceMode guard;
    auto r = (*lm)->Forward(x);
    ASSERT_TRUE(r.ok()) << r.status();
    fast = r->clone();
  }
  // Grad mode always uses the per-key parameters, and is differentiable.
  auto slow = (*lm)->Forward(x);
  ASSERT_TRUE(slow.ok()) << slow.status();
  slow->sum().backward();
  EXPECT_TRUE(layer->self_attn->q_proj->weight.grad().defined());
  EXPECT_LT((fast - slow->detach()).abs().max().item<float>(), 1e-5);
}

// bf16-stored weights computed in fp32 (what "--dtype bf16" runs as on CPUs
// without native bf16 matmuls) equal an fp32 model holding the same,
// bf16-rounded values, on the prefill (at::linear) and decode (FastLinear)
// paths, and read half the bytes per token.
TEST(CausalLM, Bf16WeightsComputedInFp32MatchFp32ModelOfTheSameValues) {
  for (LlmArch arch : {LlmArch::kQwen2, LlmArch::kInternLM2}) {
    auto mixed = CausalLM::CreateRandom(TinyConfig(arch), Precision{at::kFloat, at::kBFloat16}, 6, 0.2);
    auto full = CausalLM::CreateRandom(TinyConfig(arch), at::kFloat, 7, 0.2);
    ASSERT_TRUE(mixed.ok() && full.ok());
    EXPECT_EQ((*mixed)->dtype(), at::kFloat);
    EXPECT_EQ((*mixed)->weight_dtype(), at::kBFloat16);
    {
      at::NoGradGuard no_grad;
      auto src = (*mixed)->module()->named_parameters();
      for (auto& item : (*full)->module()->named_parameters()) {
        const at::Tensor& from = src[item.key()];
        EXPECT_EQ(from.scalar_type(), from.dim() < 2 ? at::kFloat : at::kBFloat16) << item.key();
        item.value().copy_(from);
      }
    }
    EXPECT_EQ(2 * (*mixed)->decode_weight_bytes() - (*full)->decode_weight_bytes(),
              [&] {  // norms and biases stay fp32 in both
                int64_t n = 0;
                for (const auto& p : (*full)->module()->parameters()) n += p.dim() < 2 ? p.numel() * 4 : 0;
                return n;
              }());
    at::InferenceMode guard;
    const at::Tensor ids = at::tensor({3L, 1L, 4L, 1L, 5L, 9L}).view({1, 6});
    auto emb = (*mixed)->Embed(ids);
    ASSERT_TRUE(emb.ok());
    EXPECT_EQ(emb->scalar_type(), at::kFloat);
    auto pool_m = (*mixed)->NewPagedPool(4, 4);
    auto pool_f = (*full)->NewPagedPool(4, 4);
    ASSERT_TRUE(pool_m.ok() && pool_f.ok());
    RotaryEmbedding rope_m = (*mixed)->NewRotary(), rope_f = (*full)->NewRotary();
    const at::Tensor x = at::randn({9, 32});
    // A 6-token prefill (at::linear), then 1-token decode steps (FastLinear).
    for (auto [begin, len] : {std::pair{0, 6}, {6, 1}, {7, 1}, {8, 1}}) {
      const PagedSeq seq{begin, len, {0, 1, 2}, true};
      auto a = (*mixed)->ForwardPaged(x.narrow(0, begin, len), {seq}, {&rope_m}, **pool_m);
      auto b = (*full)->ForwardPaged(x.narrow(0, begin, len), {seq}, {&rope_f}, **pool_f);
      ASSERT_TRUE(a.ok() && b.ok());
      EXPECT_LT((*a - *b).abs().max().item<float>(), 1e-5) << "position " << begin;
    }
  }
}

void ExpectRopeLoopsAreOps(int64_t d);

// The decode loops below run the row kernels of the decode path's kernel
// (gemv_kernels.h): each test runs them on every kernel this CPU has.
const GemvKernel kKernels[] = {GemvKernel::kPortable, GemvKernel::kAvx2, GemvKernel::kAvx512Bf16};

TEST(RMSNorm, InferenceLoopMatchesOps) {
  for (GemvKernel kernel : kKernels) {
    if (!ForceGemvKernel(kernel)) continue;
    SCOPED_TRACE(GemvKernelName(kernel));
    for (int64_t n : {96, 899}) {  // (899: a tail past the 8-wide vectors)
      RMSNorm norm(n, 1e-6, at::kFloat);
      {
        at::NoGradGuard no_grad;
        norm->weight.uniform_(0.5, 1.5);
      }
      const at::Tensor x = at::randn({2, 3, n}) * 3;
      const at::Tensor ops = norm(x).detach();  // grad mode: the op chain
      at::InferenceMode guard;
      const at::Tensor loop = norm(x);
      EXPECT_LT((loop - ops).abs().max().item<float>(), 1e-6 * ops.abs().max().item<float>()) << n;
    }
  }
  ForceGemvKernel(std::nullopt);
}

TEST(RMSNorm, Bf16InferenceLoopMatchesOps) {
  // bf16 weights and input (a model computed in bf16): the loop rounds as
  // the op chain does; only the mean of squares is summed differently (in
  // double), so an element may differ by one bf16 step where h * inv lies
  // at a rounding tie's edge.
  for (GemvKernel kernel : kKernels) {
    if (!ForceGemvKernel(kernel)) continue;
    SCOPED_TRACE(GemvKernelName(kernel));
    for (int64_t n : {896, 901}) {
      RMSNorm norm(n, 1e-6, at::kBFloat16);
      {
        at::NoGradGuard no_grad;
        norm->weight.uniform_(0.5, 1.5);
      }
      const at::Tensor x = (at::randn({3, n}) * 3).to(at::kBFloat16);
      const at::Tensor ops = norm(x).detach();  // grad mode: the op chain
      at::InferenceMode guard;
      const at::Tensor loop = norm(x);
      ASSERT_EQ(loop.scalar_type(), at::kBFloat16);
      const at::Tensor diff = (loop.to(at::kFloat) - ops.to(at::kFloat)).abs();
      EXPECT_LE(diff.max().item<float>(), ops.to(at::kFloat).abs().max().item<float>() / 128) << n;
      EXPECT_LT(diff.gt(0).sum().item<int64_t>(), x.numel() / 100) << n;
    }
  }
  ForceGemvKernel(std::nullopt);
}

TEST(ApplyRope, DecodeLoopsAreBitIdenticalToOps) {
  for (GemvKernel kernel : kKernels) {
    if (!ForceGemvKernel(kernel)) continue;
    SCOPED_TRACE(GemvKernelName(kernel));
    for (int64_t d : {64, 128, 40}) {  // (40: not a multiple of 16, the AVX2 loop's step)
      ExpectRopeLoopsAreOps(d);
    }
  }
  ForceGemvKernel(std::nullopt);
}

TEST(Add, DecodeRowsGiveLibtorchsBits) {
  for (GemvKernel kernel : kKernels) {
    if (!ForceGemvKernel(kernel)) continue;
    SCOPED_TRACE(GemvKernelName(kernel));
    for (const at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
      for (int64_t n : {896, 13}) {  // (13: a tail past the 8-wide vectors)
        // Values of far apart sizes: the fp32 sum rounds before bf16 does.
        const at::Tensor x = (at::randn({1, 2, n}) * at::pow(10, at::randint(-3, 4, {1, 2, n}))).to(dtype);
        const at::Tensor y = (at::randn({1, 2, n}) * 1e3).to(dtype);
        const at::Tensor ops = x + y;
        at::InferenceMode guard;
        EXPECT_TRUE(at::equal(Add(x, y), ops)) << dtype << " " << n;
        at::Tensor z = x.clone();
        EXPECT_TRUE(at::equal(AddInPlace(z, y), ops)) << dtype << " " << n;
        EXPECT_TRUE(at::equal(z, ops)) << dtype << " " << n;
      }
    }
  }
  ForceGemvKernel(std::nullopt);
}

void ExpectRopeLoopsAreOps(int64_t d) {
  for (const at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    const at::Tensor x = at::randn({1, 3, 4, d}).mul(4).to(dtype);
    const at::Tensor angles = at::rand({1, 3, 1, d}) * 40;
    const at::Tensor cos = angles.cos().to(dtype), sin = angles.sin().to(dtype);
    const at::Tensor ops = ApplyRope(x, cos, sin).detach();  // grad mode: the op chain
    at::InferenceMode guard;
    const at::Tensor loop = ApplyRope(x, cos, sin);
    ASSERT_EQ(loop.scalar_type(), dtype);
    EXPECT_TRUE(at::equal(loop, ops)) << dtype;
    // A strided q (a view into a fused qkv row) too.
    const at::Tensor fused = at::randn({1, 3, 6, d}).to(dtype);
    EXPECT_TRUE(at::equal(ApplyRope(fused.narrow(2, 1, 4), cos, sin),
                          [&] {
                            at::AutoGradMode grad(true);
                            return ApplyRope(fused.narrow(2, 1, 4), cos, sin).detach();
                          }()))
        << dtype;
  }
}

// A decode row of a wide MLP (bf16, 4864 columns: each row's SwiGLU split
// between the threads) gives the bits of the unsplit ops, fused or not.
TEST(LlamaMLP, DecodeRowSplitBetweenThreadsKeepsTheBits) {
  const int threads = at::get_num_threads();
  at::set_num_threads(2);
  for (LlmArch arch : {LlmArch::kQwen2, LlmArch::kInternLM2}) {
    LlmConfig c = TinyConfig(arch);
    c.hidden_size = 64;
    c.intermediate_size = 4864;
    auto lm = CausalLM::CreateRandom(c, at::kBFloat16, 3, 0.2);
    ASSERT_TRUE(lm.ok());
    auto& layer = (*lm)->module()->model->typed_layers[0];
    at::InferenceMode guard;
    const at::Tensor x = (at::randn({1, 1, c.hidden_size}) * 2).to(at::kBFloat16);
    at::Tensor fused, unfused;
    if (auto* l = dynamic_cast<LlamaDecoderLayerImpl*>(layer.get())) {
      fused = l->mlp->forward(x);
      unfused = l->mlp->down_proj(SwiGlu(l->mlp->gate_proj(x), l->mlp->up_proj(x)));
    } else {
      auto* m = dynamic_cast<InternLM2DecoderLayerImpl*>(layer.get())->feed_forward.get();
      fused = m->forward(x);
      unfused = m->w2(SwiGlu(m->w1(x), m->w3(x)));
    }
    EXPECT_TRUE(at::equal(fused, unfused)) << static_cast<int>(arch);
  }
  at::set_num_threads(threads);
}

TEST(RotaryEmbedding, DynamicNtkEnlargesBaseOnlyPastMaxAndKeepsIt) {
  LlmConfig c = TinyConfig(LlmArch::kInternLM2);
  c.rope_scaling = RopeScaling{"dynamic", 2.0};
  RotaryEmbedding rope(c);
  rope.Observe(64);
  EXPECT_DOUBLE_EQ(rope.base(), 10000);
  rope.Observe(128);
  const double expected = 10000 * std::pow(2.0 * 128 / 64 - 1, 8.0 / 6.0);
  EXPECT_DOUBLE_EQ(rope.base(), expected);
  rope.Observe(10);  // a later short sequence keeps the enlarged base
  EXPECT_DOUBLE_EQ(rope.base(), expected);
}

// The host-positions tables (rows copied from shared blocks computed once)
// are the ops' own bits, at block edges and far out, in fp32 and bf16, with
// and without linear scaling, and once dynamic NTK has moved the base (then
// computed, not cached); every row also matches a fresh rotary state's.
TEST(RotaryEmbedding, HostPositionTablesAreTheOpsBits) {
  at::InferenceMode guard;
  const std::vector<std::vector<int64_t>> cases = {{0},
                                                   {1},
                                                   {255},
                                                   {256},
                                                   {257},
                                                   {2500},
                                                   {32767},
                                                   {40000},
                                                   {3, 256, 70000},
                                                   {511, 512, 513, 9, 0, 100000},
                                                   {131071, 131072, 5}};
  for (const char* scaling : {"", "linear", "dynamic"}) {
    LlmConfig c = TinyConfig(LlmArch::kQwen2);  // (head dim 8)
    c.hidden_size = 14 * 64;                    // InternVL2-1B's head dim 64
    c.num_attention_heads = 14;
    c.max_position_embeddings = 32768;
    c.rope_theta = 1000000;
    if (*scaling != 0) c.rope_scaling = RopeScaling{scaling, 2.0};
    RotaryEmbedding rope(c);
    for (int moved = 0; moved < (std::string(scaling) == "dynamic" ? 2 : 1); ++moved) {
      if (moved) rope.Observe(2 * c.max_position_embeddings);
      for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
        for (int pass = 0; pass < 2; ++pass) {  // (the second from the blocks made by the first)
          for (const std::vector<int64_t>& pos : cases) {
            const int64_t n = static_cast<int64_t>(pos.size());
            auto [cos, sin] = rope.Tables(pos, dtype);
            auto [cos_ops, sin_ops] = rope.Tables(at::tensor(pos, at::kLong).view({1, n}), dtype);
            const std::string what = std::string(scaling) + (moved ? " moved" : "") + " " + c10::toString(dtype) +
                                     " pass " + std::to_string(pass) + " first " + std::to_string(pos[0]);
            ASSERT_EQ(cos.sizes(), cos_ops.sizes()) << what;
            EXPECT_EQ(cos.scalar_type(), dtype) << what;
            EXPECT_TRUE(at::equal(cos, cos_ops)) << what;
            EXPECT_TRUE(at::equal(sin, sin_ops)) << what;
          }
        }
      }
    }
  }
}

// Embed's rows copied from the table (widened where bf16 weights compute in
// fp32) are the embedding op's, for any id layout; an id outside the
// vocabulary is still refused.
TEST(CausalLM, EmbedCopiesTheOpsRows) {
  at::InferenceMode guard;
  const LlmConfig c = TinyConfig(LlmArch::kQwen2);
  for (const Precision& precision : {Precision{at::kFloat, at::kFloat}, Precision{at::kBFloat16, at::kBFloat16},
                                     Precision{at::kFloat, at::kBFloat16}}) {
    auto lm = CausalLM::CreateRandom(c, precision, 5, 0.5);
    ASSERT_TRUE(lm.ok()) << lm.status();
    const at::Tensor& table = (*lm)->module()->model->embed->weight;
    for (const at::Tensor& ids :
         {at::tensor({7}, at::kLong).view({1, 1}), at::tensor({0, 49, 3, 3}, at::kLong).view({2, 2}),
          at::randint(0, c.vocab_size, {1, 40}, at::kLong)}) {
      auto rows = (*lm)->Embed(ids);
      ASSERT_TRUE(rows.ok()) << rows.status();
      const at::Tensor expected = at::embedding(table, ids).to(precision.compute);
      EXPECT_EQ(rows->scalar_type(), precision.compute);
      EXPECT_TRUE(at::equal(*rows, expected)) << ids;
    }
    EXPECT_FALSE((*lm)->Embed(at::tensor({3, 50}, at::kLong).view({1, 2})).ok());
    EXPECT_FALSE((*lm)->Embed(at::tensor({-1}, at::kLong).view({1, 1})).ok());
  }
}

TEST(ScatterImageEmbeddings, ReplacesContextRowsInOrderAndRejectsCountMismatch) {
  at::InferenceMode guard;
  const at::Tensor text = at::zeros({1, 5, 4});
  const at::Tensor ids = at::tensor({1L, 9L, 9L, 2L, 9L}).view({1, 5});
  const at::Tensor vit = at::arange(12, at::kFloat).view({1, 3, 4});
  auto out = ScatterImageEmbeddings(text, ids, 9, vit);
  ASSERT_TRUE(out.ok());
  EXPECT_TRUE(at::equal(out->select(1, 4), vit[0][2].view({1, 4})));
  EXPECT_TRUE(at::equal(out->select(1, 0), at::zeros({1, 4})));
  EXPECT_EQ(ScatterImageEmbeddings(text, ids, 9, vit.narrow(1, 0, 2)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace internvl::llm
