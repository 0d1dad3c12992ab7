// internvl make-model (core/modelgen): the random checkpoints it writes load
// in the project's own loaders with exactly the expected keys, shard and
// round-trip through TensorStore, are reproducible from the seed, and carry a
// working tokenizer.
#include <filesystem>
#include <map>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/files.h"
#include "core/modelgen/byte_bpe.h"
#include "core/modelgen/checkpoint_layout.h"
#include "core/modelgen/make_model.h"
#include "core/modelgen/model_specs.h"
#include "core/safetensors.h"
#include "core/testing/fixtures.h"
#include "core/tokenizer/tokenizer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace internvl::modelgen {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

// Small enough for a test (tens of MB): one layer of each stack at the real
// widths, and a vocabulary that still holds the byte-level BPE's 425 ids.
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

// Layer indices replaced by "N", so that a full-depth layout compares with a
// fixture's two-layer one.
std::set<std::string> LayerPatterns(const std::set<std::string>& names) {
  static const std::regex kLayer(R"(\.layers\.\d+\.)");
  std::set<std::string> out;
  for (const std::string& n : names) out.insert(std::regex_replace(n, kLayer, ".layers.N."));
  return out;
}

std::vector<uint8_t> Bytes(const TensorStore& store, const std::string& name) {
  const TensorView* v = store.Find(name);
  if (v == nullptr) return {};
  return {v->data, v->data + v->nbytes};
}

TEST(ModelSpecs, EveryPublishedModelParsesWithItsRealShapes) {
  for (const std::string& name : ModelSpecNames()) {
    MakeModelOptions o;
    o.like = name;
    auto c = MakeModelConfig(o);
    ASSERT_TRUE(c.ok()) << name << ": " << c.status();
    EXPECT_EQ(c->select_layer, -1) << name;
    EXPECT_EQ(c->ps_version, "v2") << name;
    EXPECT_EQ(c->image_size(), 448) << name;
    EXPECT_EQ(c->num_image_token(), 256) << name;
    EXPECT_EQ(c->max_dynamic_patch, 12) << name;
    EXPECT_TRUE(c->dynamic_image_size && c->use_thumbnail) << name;
  }
  auto one = FindModelSpec("OpenGVLab/InternVL2-1B");
  ASSERT_TRUE(one.ok());
  EXPECT_EQ(one->config.llm.hidden_size, 896);
  EXPECT_EQ(one->config.llm.vocab_size, 151655);
  EXPECT_EQ(one->config.template_name, "Hermes-2");
  auto big = FindModelSpec("InternVL2-26B");
  ASSERT_TRUE(big.ok());
  ASSERT_TRUE(big->config.llm.rope_scaling.has_value());
  EXPECT_EQ(big->config.llm.rope_scaling->factor, 3.0);
  EXPECT_EQ(big->config.vision.num_hidden_layers, 45);
  auto yi = FindModelSpec("InternVL2-40B");
  ASSERT_TRUE(yi.ok());
  EXPECT_EQ(yi->config.llm.arch, LlmArch::kLlama);
  EXPECT_EQ(yi->config.llm.rope_theta, 5e6);
  EXPECT_FALSE(yi->config.llm.rope_scaling.has_value());
}

TEST(ModelSpecs, ParameterCountsMatchThePublishedSizes) {
  // Model cards (OpenGVLab/<name> on the HF hub) give the total size; the
  // checkpoint's parameter count must land within 1% of it.
  const std::map<std::string, double> published_billions = {
      {"InternVL2-1B", 0.938},   {"InternVL2-2B", 2.21},  {"InternVL2_5-4B", 3.71},
      {"InternVL2-8B", 8.08},    {"InternVL2-26B", 25.51}, {"InternVL2-40B", 40.07},
  };
  for (const auto& [name, billions] : published_billions) {
    auto spec = FindModelSpec(name);
    ASSERT_TRUE(spec.ok()) << spec.status();
    int64_t params = 0;
    for (const TensorSpec& t : CheckpointTensors(spec->config)) params += t.numel();
    EXPECT_NEAR(params / 1e9, billions, billions * 0.01) << name << " has " << params << " parameters";
  }
}

TEST(ModelSpecs, UnknownModelIsNotFoundAndListsTheKnownOnes) {
  auto spec = FindModelSpec("InternVL2-3B");
  ASSERT_TRUE(absl::IsNotFound(spec.status()));
  EXPECT_THAT(std::string(spec.status().message()), HasSubstr("InternVL2-40B"));
}

TEST(CheckpointLayout, NamesMatchTheTinyFixturesOfEachArchitecture) {
  INTERNVL_REQUIRE_FIXTURES(fixtures);
  const std::pair<const char*, const char*> cases[] = {
      {"InternVL2-1B", "tiny-qwen2"}, {"InternVL2-2B", "tiny-internlm2"}, {"InternVL2-40B", "tiny-llama"}};
  for (const auto& [like, fixture] : cases) {
    auto spec = FindModelSpec(like);
    ASSERT_TRUE(spec.ok());
    auto store = TensorStore::OpenDir(fixtures + "/" + fixture);
    ASSERT_TRUE(store.ok()) << store.status();
    EXPECT_EQ(LayerPatterns(ExpectedNames(spec->config)), LayerPatterns(StoreNames(**store))) << like;
  }
}

TEST(MakeModel, WritesTheConfigGenerationConfigAndTokenizerThatBelongTogether) {
  const std::string dir = testing::TempDir() + "/internvl2-1b";
  auto summary = MakeModel(SmallOptions("InternVL2-1B", dir));
  ASSERT_TRUE(summary.ok()) << summary.status();
  auto config = LoadInternVLConfig(dir);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->llm.hidden_size, 896);
  EXPECT_EQ(config->llm.num_hidden_layers, kTestLayers);
  EXPECT_EQ(config->vision.num_hidden_layers, kTestLayers);
  auto store = TensorStore::OpenDir(dir);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ(StoreNames(**store), ExpectedNames(*config));
  int64_t params = 0;
  for (const std::string& n : (*store)->Names()) params += (*store)->Find(n)->numel();
  EXPECT_EQ(params, summary->params);
  const nlohmann::json line = nlohmann::json::parse(SummaryJson(*summary));
  EXPECT_EQ(line["like"], "InternVL2-1B");
  EXPECT_EQ(line["params"].get<int64_t>(), params);
  EXPECT_EQ(line["files"].back(), "config.json");  // written last: the completion marker

  auto generation = LoadGenerationConfig(dir);
  ASSERT_TRUE(generation.ok()) << generation.status();
  auto tok = tokenizer::Tokenizer::Load(dir);
  ASSERT_TRUE(tok.ok()) << tok.status();
  ASSERT_FALSE(generation->eos_token_ids.empty());
  EXPECT_EQ(generation->eos_token_ids.at(0), tok->get()->TokenToId("<|im_end|>"));
  EXPECT_EQ(config->llm.eos_token_ids, std::vector<int>{*tok->get()->TokenToId("<|im_end|>")});
  EXPECT_LE(tok->get()->size(), config->llm.vocab_size);
  // LM head rows the tokenizer cannot spell are zero; the others are random.
  auto head = ToFloatVector(*(*store)->Find("language_model.lm_head.weight"));
  ASSERT_TRUE(head.ok());
  const int64_t hidden = config->llm.hidden_size;
  const int64_t live = tok->get()->size() * hidden;
  int nonzero_live = 0;
  for (int64_t k = 0; k < live; ++k) nonzero_live += (*head)[k] != 0.0f;
  EXPECT_GT(nonzero_live, live * 9 / 10);
  for (size_t k = live; k < head->size(); ++k) ASSERT_EQ((*head)[k], 0.0f) << k;
}

TEST(MakeModel, ShardsRoundTripThroughTheIndexAndAreReproducible) {
  const std::string single = testing::TempDir() + "/single";
  const std::string sharded = testing::TempDir() + "/sharded";
  ASSERT_TRUE(MakeModel(SmallOptions("InternVL2-1B", single)).ok());
  MakeModelOptions o = SmallOptions("InternVL2-1B", sharded);
  o.shards.max_shard_bytes = 8 << 20;
  o.shards.chunk_elements = 12345;  // a different chunking must give the same bytes
  o.threads = 3;
  auto summary = MakeModel(o);
  ASSERT_TRUE(summary.ok()) << summary.status();
  EXPECT_TRUE(fs::exists(sharded + "/model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(sharded + "/model.safetensors"));
  int shards = 0;
  for (const std::string& f : summary->files) shards += f.rfind("model-", 0) == 0;
  EXPECT_GT(shards, 2);

  auto index = ReadFile(sharded + "/model.safetensors.index.json");
  ASSERT_TRUE(index.ok());
  const nlohmann::json j = nlohmann::json::parse(*index);
  auto a = TensorStore::OpenDir(single);
  auto b = TensorStore::OpenDir(sharded);
  ASSERT_TRUE(a.ok() && b.ok()) << a.status() << b.status();
  ASSERT_EQ(StoreNames(**a), StoreNames(**b));
  uint64_t total = 0;
  for (const std::string& n : (*a)->Names()) {
    EXPECT_EQ(Bytes(**a, n), Bytes(**b, n)) << n;
    total += (*a)->Find(n)->nbytes;
  }
  EXPECT_EQ(j["metadata"]["total_size"].get<uint64_t>(), total);
  EXPECT_EQ(j["weight_map"].size(), (*a)->Names().size());
}

TEST(MakeModel, WeightsFollowTheSeedAndTheInitRules) {
  const std::string d0 = testing::TempDir() + "/seed0";
  const std::string d1 = testing::TempDir() + "/seed1";
  MakeModelOptions o = SmallOptions("InternVL2-1B", d0);
  o.dtype = DType::kF32;
  ASSERT_TRUE(MakeModel(o).ok());
  o.out_dir = d1;
  o.seed = 8;
  ASSERT_TRUE(MakeModel(o).ok());
  auto a = TensorStore::OpenDir(d0);
  auto b = TensorStore::OpenDir(d1);
  ASSERT_TRUE(a.ok() && b.ok());
  const std::string w = "language_model.model.layers.0.mlp.gate_proj.weight";
  EXPECT_NE(Bytes(**a, w), Bytes(**b, w));
  const TensorView* view = (*a)->Find(w);
  ASSERT_NE(view, nullptr);
  EXPECT_EQ(view->dtype, DType::kF32);
  auto values = ToFloatVector(*view);
  ASSERT_TRUE(values.ok());
  double sum = 0, sq = 0;
  for (float v : *values) {
    sum += v;
    sq += double(v) * v;
  }
  const double mean = sum / values->size();
  const double stddev = std::sqrt(sq / values->size() - mean * mean);
  EXPECT_NEAR(mean, 0.0, 1e-3);
  EXPECT_NEAR(stddev, kInitStd, kInitStd * 0.02);
  for (const auto& [name, expected] :
       std::vector<std::pair<std::string, float>>{{"language_model.model.norm.weight", 1.0f},
                                                  {"vision_model.encoder.layers.0.ls1", kLayerScaleInit},
                                                  {"mlp1.1.bias", 0.0f}}) {
    auto v = ToFloatVector(*(*a)->Find(name));
    ASSERT_TRUE(v.ok()) << name;
    for (float x : *v) ASSERT_EQ(x, expected) << name;
  }
}

TEST(ByteBpe, LoadsEncodesAndDecodesWithTheInternVLTokens) {
  const std::string dir = testing::TempDir() + "/bpe";
  fs::create_directories(dir);
  auto info = WriteByteBpeTokenizer(dir);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_GT(info->base_vocab, 256 + 100);  // learnt merges on top of the bytes
  auto tok = tokenizer::Tokenizer::Load(dir);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ(tok->get()->kind(), tokenizer::Tokenizer::Kind::kQwen2Bpe);
  EXPECT_EQ(tok->get()->size(), info->total_tokens);
  std::set<int> ids;
  for (const char* t : {"<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>",
                        "</box>", "<|im_start|>", "<|im_end|>", "<|endoftext|>"}) {
    auto id = tok->get()->TokenToId(t);
    ASSERT_TRUE(id.has_value()) << t;
    EXPECT_GE(*id, info->base_vocab) << t;
    EXPECT_LT(*id, info->total_tokens) << t;
    ids.insert(*id);
  }
  EXPECT_EQ(ids.size(), 12u);
  const std::string text = "Please describe the image shortly. 图像 café\n<|im_start|>user";
  auto encoded = tok->get()->Encode(text);
  ASSERT_TRUE(encoded.ok()) << encoded.status();
  // Merges compress English (bytes alone would take one token per byte).
  const std::string english = "Please describe the image shortly.";
  auto english_ids = tok->get()->Encode(english);
  ASSERT_TRUE(english_ids.ok());
  EXPECT_LT(english_ids->size(), english.size() * 2 / 3);
  // Added tokens are split out whole, never spelt with the BPE.
  auto special = tok->get()->Encode("<|im_start|>");
  ASSERT_TRUE(special.ok());
  EXPECT_EQ(*special, std::vector<int>{*tok->get()->TokenToId("<|im_start|>")});
  EXPECT_EQ(tok->get()->Decode(*encoded), text);
  for (int id : *encoded) EXPECT_LT(id, info->total_tokens);
  // Deterministic: the same merges every time.
  EXPECT_EQ(LearnByteBpeMerges(kDefaultBpeMerges), LearnByteBpeMerges(kDefaultBpeMerges));
}

TEST(MakeModel, CopiesARealTokenizerFolderAndUsesItsEosIds) {
  INTERNVL_REQUIRE_TOKENIZERS(tokenizers);
  const std::string src = tokenizers + "/internvl2-1b-qwen2";
  if (!fs::exists(src)) GTEST_SKIP() << src << " is absent";
  const std::string dir = testing::TempDir() + "/copied";
  MakeModelOptions o = SmallOptions("InternVL2-1B", dir);
  o.tokenizer_dir = src;
  auto summary = MakeModel(o);
  ASSERT_TRUE(summary.ok()) << summary.status();
  for (const auto& entry : fs::directory_iterator(src)) {
    const std::string name = entry.path().filename().string();
    EXPECT_TRUE(fs::exists(dir + "/" + name)) << name;
    EXPECT_EQ(fs::file_size(entry.path()), fs::file_size(dir + "/" + name)) << name;
  }
  auto tok = tokenizer::Tokenizer::Load(dir);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ(tok->get()->TokenToId("<IMG_CONTEXT>"), 151648);
  auto generation = LoadGenerationConfig(dir);
  ASSERT_TRUE(generation.ok());
  EXPECT_EQ(generation->eos_token_ids, (std::vector<int>{151645, 151643}));
}

TEST(MakeModel, RejectsABadTokenizerFolderAndAVocabTooSmallForTheTokenizer) {
  MakeModelOptions o = SmallOptions("InternVL2-1B", testing::TempDir() + "/bad");
  o.tokenizer_dir = testing::TempDir() + "/no-such-tokenizer";
  EXPECT_TRUE(absl::IsNotFound(MakeModel(o).status()));
  o.tokenizer_dir.reset();
  o.vocab_size = 300;
  auto small = MakeModel(o);
  ASSERT_TRUE(absl::IsInvalidArgument(small.status()));
  EXPECT_THAT(std::string(small.status().message()), HasSubstr("vocab_size"));
  EXPECT_FALSE(fs::exists(testing::TempDir() + "/bad/config.json"));
}

}  // namespace
}  // namespace internvl::modelgen
