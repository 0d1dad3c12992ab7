// internvl make-model (core/modelgen): shrunk checkpoints of each LLM
// architecture load in VisionModel and CausalLM, which reject missing,
// unexpected and mis-shaped keys under their prefixes. Kept apart from
// make_model_test.cc because a binary linking both libtorch and
// sentencepiece crashes at start-up on Debian 12 (libsentencepiece0 exports
// its bundled protobuf-lite symbols, which interpose on torch's libprotobuf).
#include <ATen/ATen.h>

#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/llm/awq_checkpoint.h"
#include "core/llm/causal_lm.h"
#include "core/modelgen/checkpoint_layout.h"
#include "core/modelgen/make_model.h"
#include "core/nn/torch_util.h"
#include "core/safetensors.h"
#include "core/testing/fixtures.h"
#include "core/vision/vision_model.h"
#include "gtest/gtest.h"

namespace internvl::modelgen {
namespace {

constexpr int kTestLayers = 1;
constexpr int kTestVocab = 1024;

MakeModelOptions SmallOptions(const std::string& like, const std::string& out) {
  MakeModelOptions o;
  o.like = like;
  o.out_dir = out;
  o.seed = 7;
  o.layers = kTestLayers;
  o.vocab_size = kTestVocab;
  return o;
}

std::set<std::string> ExpectedNames(const InternVLConfig& config) {
  std::set<std::string> names;
  for (const TensorSpec& t : CheckpointTensors(config)) names.insert(t.name);
  return names;
}

std::set<std::string> StoreNames(const TensorStore& store) {
  const std::vector<std::string> v = store.Names();
  return {v.begin(), v.end()};
}

TEST(MakeModel, Qwen2CheckpointLoadsInTheVisionModelAndTheLlmWithExactlyTheExpectedKeys) {
  const std::string dir = testing::TempDir() + "/internvl2-1b";
  auto summary = MakeModel(SmallOptions("InternVL2-1B", dir));
  ASSERT_TRUE(summary.ok()) << summary.status();
  auto config = LoadInternVLConfig(dir);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->llm.arch, LlmArch::kQwen2);
  EXPECT_EQ(config->llm.hidden_size, 896);
  EXPECT_EQ(config->llm.num_hidden_layers, kTestLayers);
  EXPECT_EQ(config->vision.num_hidden_layers, kTestLayers);
  EXPECT_EQ(config->template_name, "Hermes-2");

  auto store = TensorStore::OpenDir(dir);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ(StoreNames(**store), ExpectedNames(*config));
  int64_t params = 0;
  for (const std::string& n : (*store)->Names()) params += (*store)->Find(n)->numel();
  EXPECT_EQ(params, summary->params);

  // Both loaders reject missing, unexpected and mis-shaped keys under their
  // prefixes, so loading proves the key sets.
  auto vision = VisionModel::Load(dir, VisionOptions{.dtype = "fp32"});
  ASSERT_TRUE(vision.ok()) << vision.status();
  EXPECT_EQ(vision->get()->output_hidden_size(), 896);
  auto lm = llm::CausalLM::Load(config->llm, **store, at::kFloat);
  ASSERT_TRUE(lm.ok()) << lm.status();
}

TEST(MakeModel, InternLM2CheckpointLoadsWithFusedWqkv) {
  const std::string dir = testing::TempDir() + "/internvl2-2b";
  auto summary = MakeModel(SmallOptions("InternVL2-2B", dir));
  ASSERT_TRUE(summary.ok()) << summary.status();
  auto config = LoadInternVLConfig(dir);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->llm.arch, LlmArch::kInternLM2);
  ASSERT_TRUE(config->llm.rope_scaling.has_value());
  EXPECT_EQ(config->llm.rope_scaling->type, "dynamic");
  EXPECT_EQ(config->template_name, "internlm2-chat");
  auto store = TensorStore::OpenDir(dir);
  ASSERT_TRUE(store.ok()) << store.status();
  const TensorView* wqkv = (*store)->Find("language_model.model.layers.0.attention.wqkv.weight");
  ASSERT_NE(wqkv, nullptr);
  // (16 heads + 2 * 8 kv heads) * head_dim 128 rows over hidden 2048.
  EXPECT_EQ(wqkv->shape, (std::vector<int64_t>{(16 + 2 * 8) * 128, 2048}));
  auto lm = llm::CausalLM::Load(config->llm, **store, at::kFloat);
  ASSERT_TRUE(lm.ok()) << lm.status();
  auto vision = VisionModel::Load(*config, **store, VisionOptions{.dtype = "fp32"});
  ASSERT_TRUE(vision.ok()) << vision.status();
}

// make-model --awq: the published AWQ layout (qweight / qzeros / scales for
// the decoder layers, the head and embeddings as they were,
// quantization_config in config.json) loads as 4-bit and computes what the
// dequantized weights compute.
TEST(MakeModel, AwqCheckpointLoadsItsLayersAsFourBit) {
  const std::string dir = testing::TempDir() + "/internvl2-1b-awq";
  auto summary = MakeModel(SmallOptions("InternVL2-1B", dir));
  ASSERT_TRUE(summary.ok()) << summary.status();
  ASSERT_TRUE(llm::ConvertCheckpointToAwq(dir, 128).ok());
  EXPECT_EQ(llm::ConvertCheckpointToAwq(dir, 128).code(), absl::StatusCode::kFailedPrecondition);
  auto config = LoadInternVLConfig(dir);
  ASSERT_TRUE(config.ok()) << config.status();
  ASSERT_TRUE(config->llm.awq.has_value());
  EXPECT_EQ(config->llm.awq->group_size, 128);
  auto store = TensorStore::OpenDir(dir);
  ASSERT_TRUE(store.ok()) << store.status();
  const TensorView* qweight = (*store)->Find("language_model.model.layers.0.mlp.down_proj.qweight");
  ASSERT_NE(qweight, nullptr);
  EXPECT_EQ(qweight->dtype, DType::kI32);
  EXPECT_EQ(qweight->shape, (std::vector<int64_t>{4864, 896 / 8}));  // [in, out / 8]
  EXPECT_EQ((*store)->Find("language_model.model.layers.0.mlp.down_proj.scales")->dtype, DType::kF16);
  EXPECT_EQ((*store)->Find("language_model.model.layers.0.mlp.down_proj.weight"), nullptr);
  EXPECT_NE((*store)->Find("language_model.lm_head.weight"), nullptr);
  EXPECT_NE((*store)->Find("language_model.model.layers.0.self_attn.q_proj.bias"), nullptr);
  auto lm = llm::CausalLM::Load(config->llm, **store, at::kFloat);
  ASSERT_TRUE(lm.ok()) << lm.status();
  // The head's pass over the vocabulary at 4 bits, its 64 leaders per row
  // recomputed through the checkpoint's own (here fp32) weights.
  EXPECT_EQ((*lm)->weight_format(), "int4 AWQ g128 + int4 g128 (top 64 rescored in fp32) head");
  auto with_int8 =
      llm::CausalLM::Load(config->llm, **store, llm::Precision{at::kFloat, at::kFloat, llm::Quantization::kInt8});
  ASSERT_TRUE(with_int8.ok()) << with_int8.status();
  EXPECT_EQ((*with_int8)->weight_format(), "int4 AWQ g128 + int4 g128 (top 64 rescored in int8) head");
  // Greedy decoding through the rescored head picks the tokens the head
  // alone picks (--head-candidates 0: the checkpoint's fp32 head in one
  // pass), and each step's winning logit is the head's own; the other
  // logits come from the 4-bit pass.
  {
    llm::Precision one_pass{at::kFloat, at::kFloat};
    one_pass.head_candidates = 0;
    auto plain = llm::CausalLM::Load(config->llm, **store, one_pass);
    ASSERT_TRUE(plain.ok()) << plain.status();
    EXPECT_EQ((*plain)->weight_format(), "int4 AWQ g128 + fp32 head");
    at::InferenceMode guard;
    std::vector<int64_t> ids = {5, 17, 300, 9};
    bool tails_differ = false;
    for (int step = 0; step < 16; ++step) {
      const at::Tensor embeds = *(*lm)->Embed(at::tensor(ids, at::kLong).view({1, -1}));
      const at::Tensor rescored = *(*lm)->Forward(embeds, {});
      const at::Tensor alone = *(*plain)->Forward(embeds, {});
      const int64_t next = alone.argmax(-1).item<int64_t>();
      ASSERT_EQ(rescored.argmax(-1).item<int64_t>(), next) << "step " << step;
      EXPECT_EQ(rescored[0][next].item<float>(), alone[0][next].item<float>()) << "step " << step;
      tails_differ = tails_differ || !at::equal(rescored, alone);
      ids.push_back(next);
    }
    EXPECT_TRUE(tails_differ);
    // Logits at every position (LogitsMode::kAll) are the head's own.
    llm::ForwardOptions all;
    all.logits = llm::LogitsMode::kAll;
    const at::Tensor embeds = *(*lm)->Embed(at::tensor(ids, at::kLong).view({1, -1}).narrow(1, 0, 8));
    EXPECT_TRUE(at::equal(*(*lm)->Forward(embeds, all), *(*plain)->Forward(embeds, all)));
  }
  // A layer whose qweight does not fit the model is refused by name before
  // anything is unpacked.
  {
    SafetensorsWriter w;
    for (const std::string& name : (*store)->Names()) {
      at::Tensor t = TensorAlias(*(*store)->Find(name)).clone();
      if (name == "language_model.model.layers.0.mlp.down_proj.qweight") t = at::zeros({8, 896 / 8}, at::kInt);
      w.Add(name, t);
    }
    const std::string bad = testing::TempDir() + "/internvl2-1b-awq-bad";
    std::filesystem::create_directories(bad);
    ASSERT_TRUE(w.Write(bad + "/model.safetensors").ok());
    auto bad_store = TensorStore::OpenDir(bad);
    ASSERT_TRUE(bad_store.ok()) << bad_store.status();
    auto refused = llm::CausalLM::Load(config->llm, **bad_store, at::kFloat);
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(refused.status().message().find("down_proj.qweight"), std::string::npos) << refused.status();
  }
  // The vision half is untouched.
  auto vision = VisionModel::Load(*config, **store, VisionOptions{.dtype = "fp32"});
  ASSERT_TRUE(vision.ok()) << vision.status();
}

}  // namespace
}  // namespace internvl::modelgen
