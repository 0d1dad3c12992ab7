// Model parity of MiniMonkey with its official MiniMonkeyChatModel.chat on
// the tiny InternVL2-2B-style checkpoint (fixtures/minimonkey/
// scm_tiny_internlm2.json): for each case (demo and eval order, SCM off and
// on) the same tile sums, prompt, SCM selection and sequence lengths, and
// greedy ids (fp32). The checkpoint's config does not name MiniMonkey, so the
// pipeline is told (PipelineOptions::minimonkey), as `--minimonkey` does.
#include <cmath>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/chat/chat_pipeline.h"
#include "core/files.h"
#include "core/hub/digest.h"
#include "core/preprocess/minimonkey.h"
#include "core/safetensors.h"
#include "core/testing/fixtures.h"
#include "core/testing/test_device.h"
#include "core/tokenizer/tokenizer.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace internvl {
namespace {

using json = nlohmann::json;

class MiniMonkeyParity : public ::testing::Test {
 protected:
  void SetUp() override {
    auto f = ::internvl::testing::FixturesDir();
    if (!f) {
      if (::internvl::testing::InCI()) FAIL() << "reference fixtures missing under CI";
      GTEST_SKIP() << "reference fixtures not found: set INTERNVL_FIXTURES";
    }
    fixtures_ = *f;
    ref_ = json::parse(*ReadFile(fixtures_ + "/minimonkey/scm_tiny_internlm2.json"));
    auto file = SafetensorsFile::Open(fixtures_ + "/minimonkey/scm_tiny_internlm2.safetensors");
    ASSERT_TRUE(file.ok()) << file.status();
    tensors_ = std::move(*file);
  }

  std::unique_ptr<ChatPipeline> Load(bool minimonkey) {
    PipelineOptions options = PipelineOptions::Of("fp32", 2);
    options.device = ::internvl::testing::TestDevice();
    options.minimonkey = minimonkey;
    options.llm.max_batched_tokens = 512;
    options.llm.kv_cache_bytes = int64_t{64} << 20;
    auto p = ChatPipeline::Load(fixtures_ + "/tiny-internlm2", options);
    EXPECT_TRUE(p.ok()) << p.status();
    return p.ok() ? std::move(*p) : nullptr;
  }

  ChatRequest Request(const json& c) {
    ChatRequest r;
    r.question = ref_["question"].get<std::string>();
    r.images = {
        *ReadFile(::internvl::testing::FixtureImagePath(fixtures_ + "/inputs/" + c["image"].get<std::string>()))};
    preprocess::MiniMonkeyOptions o;
    o.a_min = c["min_max_scale_a"][0];
    o.a_max = c["min_max_scale_a"][1];
    o.b_min = c["min_max_scale_b"][0];
    o.b_max = c["min_max_scale_b"][1];
    o.order = *preprocess::ParseMiniMonkeyOrder(c["pixel_values_order"].get<std::string>());
    r.minimonkey = o;
    r.scm = c["use_scm"].get<bool>();
    r.generation.max_new_tokens = 16;
    return r;
  }

  std::vector<float> Floats(const std::string& name) {
    const TensorView* v = tensors_->Find(name);
    EXPECT_NE(v, nullptr) << name;
    if (v == nullptr) return {};
    std::vector<float> out(v->numel());
    std::memcpy(out.data(), v->data, out.size() * sizeof(float));
    return out;
  }

  std::string fixtures_;
  json ref_;
  std::unique_ptr<SafetensorsFile> tensors_;
};

TEST_F(MiniMonkeyParity, EveryCaseMatchesTheOfficialChat) {
  auto pipeline = Load(/*minimonkey=*/true);
  ASSERT_NE(pipeline, nullptr);
  ASSERT_TRUE(pipeline->minimonkey());
  const int eos = ref_["eos_token_id_used"].get<int>();
  int cases = 0;
  for (const auto& [name, c] : ref_["cases"].items()) {
    SCOPED_TRACE(name);
    ++cases;
    const ChatRequest request = Request(c);

    // The tiles: one pixel_values sum per tile, in the official order.
    auto tiles = preprocess::LoadMiniMonkeyTiles(request.images[0], *request.minimonkey);
    ASSERT_TRUE(tiles.ok()) << tiles.status();
    EXPECT_EQ(tiles->plan.target_aspect_ratio().cols, c["target_aspect_ratio"][0].get<int>());
    EXPECT_EQ(tiles->plan.target_aspect_ratio().rows, c["target_aspect_ratio"][1].get<int>());
    ASSERT_EQ(tiles->tiles.count, c["n_tiles"].get<int>());
    const int s = tiles->tiles.size;
    std::vector<float> pixels(static_cast<size_t>(tiles->tiles.count) * 3 * s * s);
    preprocess::NormalizeTiles(tiles->tiles, pixels.data());
    for (int t = 0; t < tiles->tiles.count; ++t) {
      double sum = 0;
      for (size_t i = 0; i < static_cast<size_t>(3) * s * s; ++i) sum += pixels[t * 3 * s * s + i];
      EXPECT_NEAR(sum, c["pixel_values_tile_sums"][t].get<double>(), 1e-2) << "tile " << t;
    }

    // The prompt: the same query text and ids.
    auto query = pipeline->BuildQuery(request, {tiles->tiles.count});
    ASSERT_TRUE(query.ok()) << query.status();
    EXPECT_EQ(hub::Sha256Hex(*query), c["query_sha256"].get<std::string>());
    auto ids = pipeline->tokenizer().Encode(*query);
    ASSERT_TRUE(ids.ok()) << ids.status();
    ASSERT_EQ(static_cast<int>(ids->size()), c["input_ids_len"].get<int>());
    EXPECT_EQ(std::vector<int>(ids->begin(), ids->begin() + c["input_ids_head"].size()),
              c["input_ids_head"].get<std::vector<int>>());
    EXPECT_EQ(std::vector<int>(ids->end() - c["input_ids_tail"].size(), ids->end()),
              c["input_ids_tail"].get<std::vector<int>>());

    // The chat: SCM's selection and lengths, then the greedy ids.
    auto result = pipeline->Chat(request);
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(result->num_tiles, c["n_tiles"].get<int>());
    EXPECT_EQ(result->num_patches_list, std::vector<int>{c["n_tiles"].get<int>()});
    EXPECT_EQ(result->scm.applied, request.scm);
    if (request.scm) {
      const json& scm = c["scm"];
      EXPECT_EQ(result->scm.first_image_token, scm["first_img_context_index_s"].get<int64_t>());
      EXPECT_EQ(result->scm.high_tokens, scm["high_token_H"].get<int64_t>());
      EXPECT_EQ(result->scm.length_before, scm["seq_len_before"].get<int64_t>());
      EXPECT_EQ(result->scm.length_after, scm["seq_len_after"].get<int64_t>());
      EXPECT_EQ(result->prompt_tokens, scm["seq_len_after"].get<int>());
      EXPECT_EQ(result->scm.kept_offsets, scm["kept_candidate_offsets_from_s"].get<std::vector<int>>());
      // The scores themselves, fp32 against fp32 (the selection is decided by
      // gaps of 1e-4 relative: these must be far tighter).
      const std::vector<float> expected = Floats(name + "_scm_scores");
      ASSERT_EQ(result->scm.scores.size(), expected.size());
      double worst = 0;
      for (size_t i = 0; i < expected.size(); ++i)
        worst = std::max(worst, std::abs(double{result->scm.scores[i]} - expected[i]) / std::abs(expected[i]));
      EXPECT_LT(worst, 1e-5);
      RecordProperty(name + "_worst_score_rel_error", absl::StrCat(worst));
    } else {
      EXPECT_EQ(result->prompt_tokens, c["input_ids_len"].get<int>());
    }
    std::vector<int> expected_ids = c["generated_ids"].get<std::vector<int>>();
    for (size_t i = 0; i < expected_ids.size(); ++i)
      if (expected_ids[i] == eos) {
        expected_ids.resize(i + 1);
        break;
      }
    EXPECT_EQ(result->token_ids, expected_ids);
    EXPECT_EQ(result->response, c["response"].get<std::string>());
  }
  EXPECT_EQ(cases, 8);
}

// SCM runs per sequence: two SCM requests decoding together in one engine
// each get their own selection (the same as alone).
TEST_F(MiniMonkeyParity, ScmSequencesBatchedTogetherKeepTheirOwnSelection) {
  auto pipeline = Load(/*minimonkey=*/true);
  ASSERT_NE(pipeline, nullptr);
  const json& a = ref_["cases"]["img_448x448_demo_scm"];
  const json& b = ref_["cases"]["img_800x600_eval_scm"];
  auto results = pipeline->BatchChat({Request(a), Request(b)});
  ASSERT_TRUE(results.ok()) << results.status();
  EXPECT_EQ((*results)[0].scm.kept_offsets, a["scm"]["kept_candidate_offsets_from_s"].get<std::vector<int>>());
  EXPECT_EQ((*results)[1].scm.kept_offsets, b["scm"]["kept_candidate_offsets_from_s"].get<std::vector<int>>());
  EXPECT_EQ((*results)[0].token_ids, a["generated_ids"].get<std::vector<int>>());
  EXPECT_EQ((*results)[1].token_ids, b["generated_ids"].get<std::vector<int>>());
}

TEST_F(MiniMonkeyParity, BadRequestsAreRefusedClearly) {
  auto plain = Load(/*minimonkey=*/false);
  ASSERT_NE(plain, nullptr);
  ASSERT_FALSE(plain->minimonkey());
  ChatRequest r = Request(ref_["cases"]["img_448x448_demo_scm"]);
  auto refused = plain->Chat(r);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument) << refused.status();
  EXPECT_NE(refused.status().message().find("MiniMonkey"), std::string::npos) << refused.status();

  auto pipeline = Load(/*minimonkey=*/true);
  ASSERT_NE(pipeline, nullptr);
  ChatRequest text_only;
  text_only.question = "Hello";
  text_only.scm = true;
  auto no_image = pipeline->Chat(text_only);
  EXPECT_EQ(no_image.status().code(), absl::StatusCode::kInvalidArgument) << no_image.status();
  EXPECT_NE(no_image.status().message().find("one image"), std::string::npos) << no_image.status();
  ChatRequest two = r;
  two.images.push_back(two.images[0]);
  EXPECT_EQ(pipeline->Chat(two).status().code(), absl::StatusCode::kInvalidArgument);
  ChatRequest wide = r;
  wide.minimonkey->a_max = 100;
  EXPECT_EQ(pipeline->Chat(wide).status().code(), absl::StatusCode::kResourceExhausted);
  ChatRequest inverted = r;
  inverted.minimonkey->b_min = 5;
  inverted.minimonkey->b_max = 4;
  EXPECT_EQ(pipeline->Chat(inverted).status().code(), absl::StatusCode::kInvalidArgument);
  // Without SCM or settings a MiniMonkey model still chats (demo defaults).
  ChatRequest plain_request;
  plain_request.question = "Hello";
  plain_request.generation.max_new_tokens = 2;
  EXPECT_TRUE(pipeline->Chat(plain_request).ok());
}

}  // namespace
}  // namespace internvl
