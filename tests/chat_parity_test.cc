// End-to-end parity of the in-process pipeline with the official chat(),
// batch_chat() and video chat, for every tiny reference model: identical
// prompts lengths, generated ids and response strings (fp32, greedy).
#include <ATen/ATen.h>

#include <fstream>
#include <sstream>
#include <thread>

#include "core/chat/chat_pipeline.h"
#include "core/files.h"
#include "core/nn/torch_util.h"
#include "core/safetensors.h"
#include "core/testing/fixtures.h"
#include "core/testing/test_device.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace internvl {
namespace {

using json = nlohmann::json;
const char* kModels[] = {"tiny-qwen2", "tiny-internlm2", "tiny-llama"};

class ChatParity : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    auto f = ::internvl::testing::FixturesDir();
    if (!f) {
      if (::internvl::testing::InCI()) FAIL() << "reference fixtures missing under CI";
      GTEST_SKIP() << "reference fixtures not found: set INTERNVL_FIXTURES";
    }
    fixtures_ = *f;
    dir_ = fixtures_ + "/" + GetParam();
    expected_ = json::parse(*ReadFile(dir_ + "/expected.json"));
    auto file = SafetensorsFile::Open(dir_ + "/expected.safetensors");
    ASSERT_TRUE(file.ok()) << file.status();
    tensors_ = std::move(*file);
    PipelineOptions options = PipelineOptions::Of("fp32", 2);
    options.device = ::internvl::testing::TestDevice();
    // A small step budget: the ~1200-2300-token prompts are prefilled in
    // chunks, interleaved with other sequences' decodes.
    options.llm.max_batched_tokens = 256;
    options.llm.kv_cache_bytes = int64_t{64} << 20;
    auto p = ChatPipeline::Load(dir_, options);
    ASSERT_TRUE(p.ok()) << p.status();
    pipeline_ = std::move(*p);
  }

  std::string Image(const std::string& name) {
    return *ReadFile(::internvl::testing::FixtureImagePath(fixtures_ + "/inputs/" + name + ".png"));
  }

  // Row `row` of X_generated_ids, cut after the first stop id (HF pads
  // finished rows of a batch with eos).
  std::vector<int> ExpectedIds(const std::string& name, int row = 0) {
    const TensorView* v = tensors_->Find(name);
    EXPECT_NE(v, nullptr) << name;
    const int64_t cols = v->shape.back();
    std::vector<int> ids;
    const int eos = expected_["eos_token_id_used"].get<int>();
    for (int64_t j = 0; j < cols; ++j) {
      int64_t id;
      std::memcpy(&id, v->data + 8 * (row * cols + j), 8);
      ids.push_back(static_cast<int>(id));
      if (id == eos) break;
    }
    return ids;
  }

  GenerationSettings Greedy16() {
    GenerationSettings g;
    g.max_new_tokens = 16;
    return g;
  }

  // The reference's calls, case by case.
  ChatRequest CaseA() {
    const json& c = expected_["cases"]["A_single_image_chat"];
    ChatRequest r;
    r.question = "Please describe the image shortly.";
    r.images = {Image(c["image"])};
    r.max_num = c["max_num"];
    r.generation = Greedy16();
    return r;
  }
  ChatRequest CaseB() {
    const json& c = expected_["cases"]["B_multi_turn"];
    ChatRequest r = CaseA();
    r.question = "What color is the circle?";
    r.history = {{c["history_in"][0][0].get<std::string>(), c["history_in"][0][1].get<std::string>()}};
    r.history_given = true;
    return r;
  }
  std::vector<ChatRequest> CaseC() {
    ChatRequest r0, r1;
    r0.question = "<image>\nDescribe the image in detail.";
    r0.images = {Image("img_448x448")};
    r0.max_num = 1;
    r1.question = "What is written in the image?";
    r1.images = {Image("img_800x600")};
    r1.max_num = 2;
    r0.generation = r1.generation = Greedy16();
    return {r0, r1};
  }
  ChatRequest CaseD() {
    ChatRequest r;
    r.question = "Hello, who are you?";
    r.generation = Greedy16();
    return r;
  }
  ChatRequest CaseE() {
    ChatRequest r;
    r.question = "What is happening in the video?";
    r.video = *ReadFile(fixtures_ + "/inputs/video.mp4");
    r.num_segments = 8;
    r.generation = Greedy16();
    return r;
  }

  std::string fixtures_, dir_;
  json expected_;
  std::unique_ptr<SafetensorsFile> tensors_;
  std::unique_ptr<ChatPipeline> pipeline_;
};

TEST_P(ChatParity, SingleImageChat) {
  const json& c = expected_["cases"]["A_single_image_chat"];
  ChatRequest r = CaseA();
  std::string streamed;
  auto result = pipeline_->Chat(r, [&](absl::string_view d) {
    streamed += std::string(d);
    return true;
  });
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->num_tiles, c["n_tiles"].get<int>());
  EXPECT_EQ(result->prompt_tokens, c["input_ids_len"].get<int>());
  EXPECT_EQ(result->token_ids, ExpectedIds("A_generated_ids"));
  EXPECT_EQ(result->response, c["response"].get<std::string>());
  // The stream, cut and stripped like the response, is the response.
  EXPECT_NE(streamed.find(result->response), std::string::npos) << streamed;
}

TEST_P(ChatParity, MultiTurnWithHistory) {
  const json& c = expected_["cases"]["B_multi_turn"];
  auto result = pipeline_->Chat(CaseB());
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->prompt_tokens, c["input_ids_len"].get<int>());
  EXPECT_EQ(result->token_ids, ExpectedIds("B_generated_ids"));
  EXPECT_EQ(result->response, c["response"].get<std::string>());
}

TEST_P(ChatParity, BatchChatWithLeftPadding) {
  const json& c = expected_["cases"]["C_batch_chat"];
  auto results = pipeline_->BatchChat(CaseC());
  ASSERT_TRUE(results.ok()) << results.status();
  ASSERT_EQ(results->size(), 2u);
  for (int row = 0; row < 2; ++row) {
    EXPECT_EQ((*results)[row].token_ids, ExpectedIds("C_generated_ids", row)) << "row " << row;
    EXPECT_EQ((*results)[row].response, c["responses"][row].get<std::string>()) << "row " << row;
  }
}

TEST_P(ChatParity, PureTextChat) {
  const json& c = expected_["cases"]["D_pure_text"];
  auto result = pipeline_->Chat(CaseD());
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->prompt_tokens, static_cast<int>(c["input_ids"].size()));
  EXPECT_EQ(result->token_ids, ExpectedIds("D_generated_ids"));
  EXPECT_EQ(result->response, c["response"].get<std::string>());
}

#ifdef INTERNVL_HAVE_VIDEO
TEST_P(ChatParity, VideoChat) {
  const json& c = expected_["cases"]["E_video"];
  auto result = pipeline_->Chat(CaseE());
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->frame_indices, c["frame_indices"].get<std::vector<int>>());
  EXPECT_EQ(result->prompt_tokens, c["input_ids_len"].get<int>());
  EXPECT_EQ(result->token_ids, ExpectedIds("E_generated_ids"));
  EXPECT_EQ(result->response, c["response"].get<std::string>());
}
#endif

// All cases at once on one engine (each from its own thread, batch chat's two
// rows included): they decode together, prompts chunked between the decodes,
// and every sequence still gets exactly the reference's ids.
TEST_P(ChatParity, ConcurrentCasesGiveTheReferenceIds) {
  struct Run {
    std::string name;
    std::vector<ChatRequest> requests;  // one chat, or batch chat's rows
    std::vector<std::vector<int>> expected;
    std::vector<std::vector<int>> got;
    absl::Status status;
  };
  std::vector<Run> runs = {
      {"A", {CaseA()}, {ExpectedIds("A_generated_ids")}, {}, {}},
      {"B", {CaseB()}, {ExpectedIds("B_generated_ids")}, {}, {}},
      {"C", CaseC(), {ExpectedIds("C_generated_ids", 0), ExpectedIds("C_generated_ids", 1)}, {}, {}},
      {"D", {CaseD()}, {ExpectedIds("D_generated_ids")}, {}, {}},
  };
#ifdef INTERNVL_HAVE_VIDEO
  runs.push_back({"E", {CaseE()}, {ExpectedIds("E_generated_ids")}, {}, {}});
#endif
  // Twice each, so that sequences also meet their own prefixes.
  const size_t n = runs.size();
  for (size_t i = 0; i < n; ++i) runs.push_back(runs[i]);
  std::vector<std::thread> threads;
  for (Run& run : runs) {
    threads.emplace_back([&run, this] {
      if (run.requests.size() > 1) {
        auto r = pipeline_->BatchChat(run.requests);
        run.status = r.status();
        if (r.ok())
          for (const auto& x : *r) run.got.push_back(x.token_ids);
        return;
      }
      auto r = pipeline_->Chat(run.requests[0]);
      run.status = r.status();
      if (r.ok()) run.got.push_back(r->token_ids);
    });
  }
  for (auto& t : threads) t.join();
  for (const Run& run : runs) {
    ASSERT_TRUE(run.status.ok()) << run.name << ": " << run.status;
    EXPECT_EQ(run.got, run.expected) << "case " << run.name;
  }
  const EngineStats stats = pipeline_->engine().llm()->stats();
  EXPECT_EQ(stats.kv_blocks_used, 0);
  EXPECT_GT(stats.prefix_hit_tokens, 0);
}

TEST_P(ChatParity, BadRequestsAreClearErrors) {
  ChatRequest empty;
  EXPECT_EQ(pipeline_->Chat(empty).status().code(), absl::StatusCode::kInvalidArgument);
  ChatRequest corrupt;
  corrupt.question = "hi";
  corrupt.images = {"not an image at all"};
  auto s = pipeline_->Chat(corrupt).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("image 1"), std::string::npos) << s;
  ChatRequest bad_tiles;
  bad_tiles.question = "hi";
  bad_tiles.images = {Image("img_448x448")};
  bad_tiles.max_num = 0;
  EXPECT_EQ(pipeline_->Chat(bad_tiles).status().code(), absl::StatusCode::kInvalidArgument);
  ChatRequest too_few_placeholders;
  too_few_placeholders.question = "<image> only one";
  too_few_placeholders.images = {Image("img_448x448"), Image("img_448x448")};
  EXPECT_EQ(pipeline_->Chat(too_few_placeholders).status().code(), absl::StatusCode::kInvalidArgument);
}

INSTANTIATE_TEST_SUITE_P(TinyModels, ChatParity, ::testing::ValuesIn(kModels));

TEST(ChatPipeline, WrongModelDirectoryIsClearError) {
  auto p = ChatPipeline::Load("/nonexistent/model", PipelineOptions{});
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace internvl
