// The public API end to end, everything real on loopback: redis-server, the
// preprocess, vision encoder and LLM decoder services and the gateway, plus
// `internvl serve --all-in-one`. Chat and ChatVideo must give exactly the
// token ids of the in-process ChatPipeline (fp32 everywhere); bad requests
// get INVALID_ARGUMENT / RESOURCE_EXHAUSTED with a clear message and leave
// every service SERVING; a client that cancels stops the decoder; a stage
// that is down gives UNAVAILABLE, not a hang.
#include <cmath>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/chat/chat_pipeline.h"
#include "core/chat/prompt_builder.h"
#include "core/testing/fixtures.h"
#include "core/tokenizer/stop_strings.h"
#include "gateway/client.h"
#include "gmock/gmock.h"
#include "grpcpp/create_channel.h"
#include "gtest/gtest.h"
#include "internvl/v1/llm_decoder.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "services/common/testing/harness.h"
#include "services/common/testing/redis_server.h"

namespace internvl::gateway {
namespace {

using ::testing::HasSubstr;
namespace st = ::internvl::services::testing;

const absl::Duration kStartTimeout = absl::Seconds(90);
constexpr int kMaxImages = 3;
constexpr int64_t kMaxVideoBytes = 64 << 10;  // the fixture video is 26 KB
// Two 1920x200 images at max_num 40 (2 x 41 tiles x 256 tokens) are over it.
constexpr const char* kMaxPromptTokens = "16384";

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

using Proc = st::ServerProcess;

// A stage binary (`cli`: the internvl CLI, which has no --grace-seconds).
Proc Spawn(const std::string& binary, std::vector<std::string> args, const std::string& log, bool cli = false) {
  if (!cli) args.insert(args.end(), {"--grace-seconds", "2"});
  auto p = st::SpawnServer(binary, std::move(args), log);
  EXPECT_TRUE(p.ok()) << p.status();
  return p.ok() ? std::move(*p) : Proc();
}

class GatewayTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const auto fixtures = ::internvl::testing::FixturesDir();
    if (!fixtures) return;
    fixtures_ = new std::string(*fixtures);
    const std::string model = *fixtures_ + "/tiny-qwen2";
    const std::string dir = ::internvl::testing::TempDir();
    auto redis = st::RedisServer::Start(dir);
    ASSERT_TRUE(redis.ok()) << redis.status();
    redis_ = redis->release();
    const std::string limits_images = std::to_string(kMaxImages);
    preprocess_ = new Proc(
        Spawn(INTERNVL_PREPROCESS_BIN, {"--max-images", limits_images, "--threads", "1"}, dir + "/gw_preprocess.log"));
    encoder_ = new Proc(Spawn(INTERNVL_VISION_ENCODER_BIN,
                              {"--model", model, "--dtype", "fp32", "--redis", redis_->address(), "--max-images",
                               limits_images, "--threads", "1"},
                              dir + "/gw_vision.log"));
    decoder_ = new Proc(Spawn(INTERNVL_LLM_DECODER_BIN,
                              {"--model", model, "--dtype", "fp32", "--threads", "1", "--max-new-tokens-limit", "4096"},
                              dir + "/gw_decoder.log"));
    gateway_ = new Proc(Spawn(INTERNVL_GATEWAY_BIN,
                              {"--model",
                               model,
                               "--preprocess-addr",
                               preprocess_->target(),
                               "--vision-addr",
                               encoder_->target(),
                               "--decoder-addr",
                               decoder_->target(),
                               "--deadline-ms",
                               "60000",
                               "--retries",
                               "1",
                               "--max-images",
                               limits_images,
                               "--max-video-bytes",
                               std::to_string(kMaxVideoBytes),
                               "--max-segments",
                               "16",
                               "--max-prompt-tokens",
                               kMaxPromptTokens},
                              dir + "/gw_gateway.log"));
    all_in_one_ = new Proc(Spawn(INTERNVL_CLI_BIN,
                                 {"serve", "--all-in-one", "--model", model, "--dtype", "fp32", "--threads", "1",
                                  "--max-images", limits_images, "--max-prompt-tokens", kMaxPromptTokens},
                                 dir + "/gw_all_in_one.log", /*cli=*/true));
    for (auto [p, name] : {std::pair{preprocess_, "internvl.v1.Preprocess"},
                           {encoder_, "internvl.v1.VisionEncoder"},
                           {decoder_, "internvl.v1.LlmDecoder"},
                           {gateway_, "internvl.v1.InternVL"},
                           {all_in_one_, "internvl.v1.InternVL"}}) {
      const absl::Status ready = st::WaitForServing(p->target(), name, p->process.get(), kStartTimeout);
      ASSERT_TRUE(ready.ok()) << name << ": " << ready;
    }
    auto pipeline = ChatPipeline::Load(model, PipelineOptions::Of("fp32", 1));
    ASSERT_TRUE(pipeline.ok()) << pipeline.status();
    pipeline_ = pipeline->release();
  }
  static void TearDownTestSuite() {
    for (Proc* p : {gateway_, all_in_one_, decoder_, encoder_, preprocess_}) delete p;
    delete redis_;
    delete pipeline_;
    delete fixtures_;
  }

  void SetUp() override {
    if (fixtures_ == nullptr) {
      INTERNVL_REQUIRE_FIXTURES(fixtures);
    }
    ASSERT_NE(pipeline_, nullptr) << "suite setup failed";
  }

  std::string Input(const std::string& name) const { return ReadFile(*fixtures_ + "/inputs/" + name); }

  // The series once it reaches `at_least`, or its value after 5 s: a call's
  // metrics are recorded when the server finishes it, which may be just
  // after the client has its reply.
  static double MetricReaching(const Proc* p, const std::string& series, double at_least) {
    double v = Metric(p, series);
    for (int i = 0; i < 50 && v < at_least; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      v = Metric(p, series);
    }
    return v;
  }

  static double Metric(const Proc* p, const std::string& series) {
    auto text = st::HttpGet(p->metrics_port, "/metrics");
    EXPECT_TRUE(text.ok()) << text.status();
    return st::MetricValue(text.value_or(""), series).value_or(-1);
  }

  // VisionEncoder.Encode calls finished so far (every status code) by
  // `encoder` (default: the suite's).
  static double EncodeCalls(const Proc* encoder = nullptr) {
    return Calls(encoder != nullptr ? encoder : encoder_, "Encode");
  }
  // `method` calls finished so far by `server` (every status code).
  static double Calls(const Proc* server, const std::string& method) {
    auto text = st::HttpGet(server->metrics_port, "/metrics");
    EXPECT_TRUE(text.ok()) << text.status();
    double n = 0;
    for (absl::string_view line : absl::StrSplit(text.value_or(""), '\n')) {
      if (!absl::StartsWith(line, "internvl_requests_total{") ||
          !absl::StrContains(line, absl::StrCat("method=\"", method, "\"")))
        continue;
      double v = 0;
      if (absl::SimpleAtod(line.substr(line.rfind(' ') + 1), &v)) n += v;
    }
    return n;
  }

  void ExpectAllServing() const {
    EXPECT_EQ(st::HealthCheck(preprocess_->target(), "internvl.v1.Preprocess").value_or("?"), "SERVING");
    EXPECT_EQ(st::HealthCheck(encoder_->target(), "internvl.v1.VisionEncoder").value_or("?"), "SERVING");
    EXPECT_EQ(st::HealthCheck(decoder_->target(), "internvl.v1.LlmDecoder").value_or("?"), "SERVING");
    EXPECT_EQ(st::HealthCheck(gateway_->target(), "internvl.v1.InternVL").value_or("?"), "SERVING");
    EXPECT_EQ(st::HealthCheck(all_in_one_->target(), "internvl.v1.InternVL").value_or("?"), "SERVING");
  }

  // The same request in-process, through the services and through the
  // all-in-one server: identical ids, response, prompt and streamed text.
  void ExpectSameEverywhere(const ChatRequest& request) {
    std::string local_text;
    auto local = pipeline_->Chat(request, [&](absl::string_view d) {
      local_text.append(d.data(), d.size());
      return true;
    });
    ASSERT_TRUE(local.ok()) << local.status();
    for (Proc* server : {gateway_, all_in_one_}) {
      SCOPED_TRACE(server == gateway_ ? "services" : "all-in-one");
      ChatClient client(server->target());
      std::string streamed;
      auto remote = client.Chat(request, [&](absl::string_view d) {
        streamed.append(d.data(), d.size());
        return true;
      });
      ASSERT_TRUE(remote.ok()) << remote.status();
      EXPECT_EQ(remote->token_ids, local->token_ids);
      EXPECT_EQ(remote->response, local->response);
      EXPECT_EQ(remote->finish_reason, local->finish_reason);
      EXPECT_EQ(remote->prompt_tokens, local->prompt_tokens);
      EXPECT_EQ(remote->num_patches_list, local->num_patches_list);
      EXPECT_EQ(remote->frame_indices, local->frame_indices);
      EXPECT_EQ(streamed, local_text);
    }
  }

  static inline std::string* fixtures_ = nullptr;
  static inline st::RedisServer* redis_ = nullptr;
  static inline Proc* preprocess_ = nullptr;
  static inline Proc* encoder_ = nullptr;
  static inline Proc* decoder_ = nullptr;
  static inline Proc* gateway_ = nullptr;
  static inline Proc* all_in_one_ = nullptr;
  static inline ChatPipeline* pipeline_ = nullptr;
};

TEST_F(GatewayTest, ImageChatGivesTheInProcessTokenIds) {
  ChatRequest r;
  r.question = "Please describe the image shortly.";
  r.images = {Input("img_300x1200.png")};
  r.max_num = 3;
  r.generation.max_new_tokens = 16;
  ExpectSameEverywhere(r);
  // The second request's image embedding came from Redis.
  ChatClient client(gateway_->target());
  auto again = client.Chat(r);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_GE(Metric(encoder_, "internvl_cache_hits_total"), 1);
  EXPECT_GE(MetricReaching(gateway_,
                           "internvl_requests_total{code=\"OK\",method=\"Chat\",service=\"internvl.v1.InternVL\"}", 2),
            2);
}

TEST_F(GatewayTest, MultiImageChatWithHistoryGivesTheInProcessTokenIds) {
  ChatRequest r;
  r.question = "What differs between <image> and <image>?";
  r.images = {Input("img_37x53.png"), Input("img_800x600.png")};
  r.max_num = 2;
  r.history = {{"Hello", "Hi, how can I help?"}};
  r.history_given = true;
  r.generation.max_new_tokens = 8;
  ExpectSameEverywhere(r);
}

TEST_F(GatewayTest, VideoChatGivesTheInProcessTokenIds) {
  ChatRequest r;
  r.question = "What happens in the video?";
  r.video = Input("video.mp4");
  r.num_segments = 4;
  r.generation.max_new_tokens = 8;
  ExpectSameEverywhere(r);
}

// A request's system message replaces the model's (model.system_message =
// ...) in process, through the services and in the all-in-one server alike,
// and the prompt is not the default one.
TEST_F(GatewayTest, SystemMessageReplacesTheDefaultOnEveryPath) {
  ChatRequest r;
  r.question = "Describe the image.";
  r.images = {Input("img_448x448.png")};
  r.max_num = 1;
  r.generation.max_new_tokens = 8;
  auto plain = pipeline_->Chat(r);
  ASSERT_TRUE(plain.ok()) << plain.status();
  r.system_message = "You are a terse assistant that answers in one short sentence, always.";
  ExpectSameEverywhere(r);
  auto custom = pipeline_->Chat(r);
  ASSERT_TRUE(custom.ok()) << custom.status();
  EXPECT_NE(custom->prompt_tokens, plain->prompt_tokens);
  auto query = PromptBuilder::Load(*fixtures_ + "/tiny-qwen2").value()->BuildQuery(r, {1});
  ASSERT_TRUE(query.ok()) << query.status();
  EXPECT_THAT(*query, HasSubstr("system\nYou are a terse assistant"));
}

// Stop strings (HF stop_strings, OpenAI `stop`): generation ends at the
// token whose text completes one, the text from the match on is neither
// streamed nor returned, and all three paths agree (ids, text, stream).
TEST_F(GatewayTest, StopStringsEndGenerationAndAreNotReturnedOnEveryPath) {
  ChatRequest r;
  r.question = "Hello, who are you? Tell me a long story.";
  r.generation.max_new_tokens = 32;
  std::string full;
  auto baseline = pipeline_->Chat(r, [&](absl::string_view d) {
    full.append(d.data(), d.size());
    return true;
  });
  ASSERT_TRUE(baseline.ok()) << baseline.status();
  // A stop string from the middle of the answer (whole UTF-8 characters).
  auto boundary = [&](size_t i) { return i >= full.size() || (static_cast<unsigned char>(full[i]) & 0xC0) != 0x80; };
  size_t begin = full.size() / 2;
  while (begin > 0 && !boundary(begin)) --begin;
  size_t end = begin + 1;
  for (int chars = 0; end < full.size() && chars < 1; ++end)
    if (boundary(end)) ++chars;
  while (!boundary(end)) ++end;
  ASSERT_GT(begin, 0u) << "the baseline answer is too short: '" << full << "'";
  const std::string stop = full.substr(begin, end - begin);
  const size_t cut = full.find(stop);
  r.generation.stop = {"a stop string that never comes", stop};
  ExpectSameEverywhere(r);

  std::string streamed;
  auto stopped = pipeline_->Chat(r, [&](absl::string_view d) {
    streamed.append(d.data(), d.size());
    return true;
  });
  ASSERT_TRUE(stopped.ok()) << stopped.status();
  EXPECT_EQ(streamed, full.substr(0, cut)) << "stop '" << stop << "'";
  EXPECT_EQ(stopped->finish_reason, FinishReason::kStop);
  // The ids end at the token that completed the match.
  const auto prompt = PromptBuilder::Load(*fixtures_ + "/tiny-qwen2").value();
  const std::vector<int>& ids = stopped->token_ids;
  ASSERT_FALSE(ids.empty());
  ASSERT_LE(ids.size(), baseline->token_ids.size());
  EXPECT_TRUE(std::equal(ids.begin(), ids.end(), baseline->token_ids.begin()));
  EXPECT_THAT(prompt->tokenizer().Decode(ids, true), HasSubstr(stop));
  EXPECT_THAT(prompt->tokenizer().Decode(std::vector<int>(ids.begin(), ids.end() - 1), true),
              ::testing::Not(HasSubstr(stop)));
  EXPECT_EQ(stopped->response, prompt->ResponseText(full.substr(0, cut)));

  // Refused: an empty stop string, too many of them.
  for (const std::vector<std::string>& bad :
       {std::vector<std::string>{""}, std::vector<std::string>(tokenizer::kMaxStopStrings + 1, "x")}) {
    ChatRequest b = r;
    b.generation.stop = bad;
    for (Proc* server : {gateway_, all_in_one_}) {
      auto refused = ChatClient(server->target()).Chat(b);
      EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument) << refused.status();
      EXPECT_THAT(refused.status().message(), HasSubstr("stop"));
    }
  }
  ExpectAllServing();
}

// MiniMonkey served by a gateway and an all-in-one server started with
// --minimonkey: the two-scale tiling goes through the preprocess service and
// the encoder's cache, SCM runs in the decoder, and every path gives the
// in-process pipeline's ids, prompt length and SCM summary. The suite's own
// (plain) gateway refuses MiniMonkey settings.
TEST_F(GatewayTest, MiniMonkeyTilingAndScmGiveTheInProcessResultOnEveryPath) {
  const std::string model = *fixtures_ + "/tiny-qwen2";
  const std::string dir = ::internvl::testing::TempDir();
  Proc gateway =
      Spawn(INTERNVL_GATEWAY_BIN,
            {"--model", model, "--preprocess-addr", preprocess_->target(), "--vision-addr", encoder_->target(),
             "--decoder-addr", decoder_->target(), "--deadline-ms", "60000", "--minimonkey"},
            dir + "/mm_gateway.log");
  const int http_port = st::PickFreePort().value_or(0);
  Proc all_in_one = Spawn(INTERNVL_CLI_BIN,
                          {"serve", "--all-in-one", "--model", model, "--dtype", "fp32", "--threads", "1",
                           "--minimonkey", "--openai-port", std::to_string(http_port), "--openai-host", "127.0.0.1"},
                          dir + "/mm_all_in_one.log", /*cli=*/true);
  for (const Proc* p : {&gateway, &all_in_one}) {
    const absl::Status ready = st::WaitForServing(p->target(), "internvl.v1.InternVL", p->process.get(), kStartTimeout);
    ASSERT_TRUE(ready.ok()) << ready;
  }
  PipelineOptions options = PipelineOptions::Of("fp32", 1);
  options.minimonkey = true;
  auto local = ChatPipeline::Load(model, options);
  ASSERT_TRUE(local.ok()) << local.status();

  ChatRequest r;
  r.question = "Describe the image.";
  r.images = {Input("img_800x600.png")};
  r.generation.max_new_tokens = 6;
  ChatResult eval_scm;  // the last case, for the OpenAI API below
  for (const bool scm : {false, true}) {
    for (const auto order : {preprocess::MiniMonkeyOrder::kDemo, preprocess::MiniMonkeyOrder::kEval}) {
      SCOPED_TRACE(absl::StrCat(scm ? "scm " : "", preprocess::MiniMonkeyOrderName(order)));
      r.scm = scm;
      r.minimonkey = preprocess::MiniMonkeyOptions();
      r.minimonkey->order = order;
      auto want = (*local)->Chat(r);
      ASSERT_TRUE(want.ok()) << want.status();
      EXPECT_EQ(want->num_patches_list, std::vector<int>{19});  // 6 B + 12 A + 1 thumbnail
      EXPECT_EQ(want->scm.applied, scm);
      eval_scm = *want;
      for (const Proc* server : {&gateway, &all_in_one}) {
        SCOPED_TRACE(server == &gateway ? "services" : "all-in-one");
        auto got = ChatClient(server->target()).Chat(r);
        ASSERT_TRUE(got.ok()) << got.status();
        EXPECT_EQ(got->token_ids, want->token_ids);
        EXPECT_EQ(got->prompt_tokens, want->prompt_tokens);
        EXPECT_EQ(got->num_patches_list, want->num_patches_list);
        EXPECT_EQ(got->scm.applied, scm);
        EXPECT_EQ(got->scm.first_image_token, want->scm.first_image_token);
        EXPECT_EQ(got->scm.high_tokens, want->scm.high_tokens);
        EXPECT_EQ(got->scm.length_before, want->scm.length_before);
        EXPECT_EQ(got->scm.length_after, want->scm.length_after);
      }
    }
  }
  // SCM kept H/2 of scale A's 12 tiles x 256 tokens and dropped one more.
  EXPECT_EQ(eval_scm.scm.length_after, eval_scm.scm.length_before - 12 * 256 / 2 - 1);

  // The OpenAI API's extra fields "scm" and "minimonkey" (same answer).
  const nlohmann::json image_part = {
      {"type", "image_url"}, {"image_url", {{"url", "data:image/png;base64," + absl::Base64Escape(r.images[0])}}}};
  const nlohmann::json text_part = {{"type", "text"}, {"text", r.question}};
  const nlohmann::json body = {
      {"model", "tiny-qwen2"},
      {"max_tokens", 6},
      {"scm", true},
      {"minimonkey", {{"order", "eval"}, {"ranges", {4, 12, 3, 7}}}},
      {"messages", nlohmann::json::array({{{"role", "user"}, {"content", {image_part, text_part}}}})}};
  std::ofstream(dir + "/mm_body.json") << body.dump();
  const auto curl = ::internvl::testing::RunShell(
      absl::StrCat("curl -sS -X POST -H 'Content-Type: application/json' --data-binary @", dir,
                   "/mm_body.json http://127.0.0.1:", http_port, "/v1/chat/completions"));
  ASSERT_EQ(curl.exit_code, 0) << curl.err;
  const nlohmann::json reply = nlohmann::json::parse(curl.out, nullptr, false);
  ASSERT_TRUE(reply.is_object() && reply.contains("choices")) << curl.out;
  EXPECT_EQ(reply["choices"][0]["token_ids"].get<std::vector<int>>(), eval_scm.token_ids);
  EXPECT_EQ(reply["usage"]["prompt_tokens"].get<int>(), eval_scm.prompt_tokens);
  EXPECT_EQ(reply["usage"]["scm"]["high_tokens"].get<int>(), 12 * 256);
  EXPECT_EQ(reply["usage"]["scm"]["prompt_tokens_before"].get<int>(), eval_scm.scm.length_before);

  // Refusals, each with the right code, and the servers stay up.
  ChatRequest two = r;
  two.images.push_back(two.images[0]);
  ChatRequest wide = r;
  wide.minimonkey->a_max = 40;
  for (const Proc* server : {&gateway, &all_in_one}) {
    EXPECT_EQ(ChatClient(server->target()).Chat(two).status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(ChatClient(server->target()).Chat(wide).status().code(), absl::StatusCode::kResourceExhausted);
  }
  for (const Proc* plain : {gateway_, all_in_one_}) {
    auto refused = ChatClient(plain->target()).Chat(r);
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument) << refused.status();
    EXPECT_THAT(std::string(refused.status().message()), HasSubstr("MiniMonkey"));
  }
  ExpectAllServing();
}

TEST_F(GatewayTest, BadRequestsAreRefusedClearlyAndServicesStayHealthy) {
  ChatClient client(gateway_->target());
  ChatRequest ok;
  ok.question = "Describe.";
  ok.images = {Input("img_448x448.png")};
  ok.max_num = 1;
  ok.generation.max_new_tokens = 2;
  struct Case {
    std::string name;
    ChatRequest request;
    absl::StatusCode code;
    std::string message;
  };
  std::vector<Case> cases;
  {
    Case c{"no text", ok, absl::StatusCode::kInvalidArgument, "text is empty"};
    c.request.question.clear();
    cases.push_back(c);
  }
  {
    Case c{"corrupt image", ok, absl::StatusCode::kInvalidArgument, "image 0"};
    c.request.images = {std::string("\x89PNG\r\n\x1a\nthis is not a png", 25)};
    cases.push_back(c);
  }
  {
    Case c{"too many images", ok, absl::StatusCode::kResourceExhausted, "over the limit"};
    c.request.images.assign(kMaxImages + 1, ok.images[0]);
    cases.push_back(c);
  }
  {
    Case c{"negative temperature", ok, absl::StatusCode::kInvalidArgument, "temperature"};
    c.request.generation.temperature = -0.5;
    cases.push_back(c);
  }
  {
    Case c{"top_p above 1", ok, absl::StatusCode::kInvalidArgument, "top_p"};
    c.request.generation.top_p = 1.5;
    cases.push_back(c);
  }
  {
    Case c{"presence_penalty below -2", ok, absl::StatusCode::kInvalidArgument, "presence_penalty"};
    c.request.generation.presence_penalty = -2.5;
    cases.push_back(c);
  }
  {
    Case c{"frequency_penalty above 2", ok, absl::StatusCode::kInvalidArgument, "frequency_penalty"};
    c.request.generation.frequency_penalty = 3;
    cases.push_back(c);
  }
  {
    Case c{"max_new_tokens 0", ok, absl::StatusCode::kInvalidArgument, "max_new_tokens"};
    c.request.generation.max_new_tokens = 0;
    cases.push_back(c);
  }
  {
    Case c{"oversized video", ok, absl::StatusCode::kResourceExhausted, "video"};
    c.request.images.clear();
    c.request.video = std::string(kMaxVideoBytes + 1, 'v');
    cases.push_back(c);
  }
  {
    Case c{"too many frames", ok, absl::StatusCode::kResourceExhausted, "num_segments"};
    c.request.images.clear();
    c.request.video = Input("video.mp4");
    c.request.num_segments = 17;
    cases.push_back(c);
  }
  {
    Case c{"undecodable video", ok, absl::StatusCode::kInvalidArgument, "video"};
    c.request.images.clear();
    c.request.video = std::string(1000, 'x');
    cases.push_back(c);
  }
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const auto start = absl::Now();
    auto result = client.Chat(c.request, nullptr, absl::Seconds(30));
    ASSERT_FALSE(result.ok());
    EXPECT_EQ(result.status().code(), c.code) << result.status();
    EXPECT_THAT(result.status().message(), HasSubstr(c.message));
    EXPECT_LT(absl::Now() - start, absl::Seconds(10));
  }
  // Prompts over the limits (text bytes, estimated prompt tokens with the
  // image tiles counted after tiling) are refused before the vision encoder
  // runs, on both paths, naming the limit's flag.
  std::vector<Case> oversized;
  {
    Case c{"5 MB question", ok, absl::StatusCode::kResourceExhausted, "--max-text-bytes"};
    c.request.question = std::string(5 << 20, 'a');
    oversized.push_back(c);
  }
  {
    Case c{"long history", ok, absl::StatusCode::kResourceExhausted, "--max-prompt-tokens"};
    c.request.history.assign(400, {std::string(300, 'q') + " ?", "an answer of some length, repeated many times"});
    c.request.history_given = true;
    c.request.images.clear();
    oversized.push_back(c);
  }
  {
    Case c{"wide images at max_num 40", ok, absl::StatusCode::kResourceExhausted, "--max-prompt-tokens"};
    c.request.images = {Input("img_1920x200.png"), Input("img_1920x200.png")};
    c.request.question = "<image>\n<image>\nCompare.";
    c.request.max_num = 40;
    oversized.push_back(c);
  }
  const double encodes_before = EncodeCalls();
  const double preprocessed_before = Calls(preprocess_, "PreprocessImages");
  EXPECT_GT(preprocessed_before, 0) << "the metric is not counted";
  for (Proc* server : {gateway_, all_in_one_}) {
    ChatClient to(server->target());
    for (const Case& c : oversized) {
      SCOPED_TRACE(absl::StrCat(c.name, server == gateway_ ? " (services)" : " (all-in-one)"));
      auto result = to.Chat(c.request, nullptr, absl::Seconds(30));
      ASSERT_FALSE(result.ok());
      EXPECT_EQ(result.status().code(), c.code) << result.status();
      EXPECT_THAT(result.status().message(), HasSubstr(c.message));
    }
  }
  EXPECT_EQ(EncodeCalls(), encodes_before) << "an oversized prompt reached the vision encoder";
  // The tile grids come from the image headers: nothing was decoded either.
  EXPECT_EQ(Calls(preprocess_, "PreprocessImages"), preprocessed_before) << "an oversized prompt was preprocessed";
  ExpectAllServing();
  auto fine = client.Chat(ok);
  EXPECT_TRUE(fine.ok()) << fine.status();
}

TEST_F(GatewayTest, ClientCancellationStopsTheDecoder) {
  const double before = Metric(decoder_, "internvl_decoder_cancelled_total");
  const double tokens_before = Metric(decoder_, "internvl_decoder_tokens_total");
  ChatRequest r;
  r.question = "Tell a very long story.";
  r.generation.max_new_tokens = 4000;
  r.generation.do_sample = true;  // a sampled tiny model rarely hits an end token early
  r.generation.seed = 7;
  ChatClient client(gateway_->target());
  int deltas = 0;
  auto result = client.Chat(r, [&](absl::string_view) { return ++deltas < 3; });
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kCancelled) << result.status();
  // The decoder notices within a token or two and counts the cancellation.
  const absl::Time until = absl::Now() + absl::Seconds(20);
  while (Metric(decoder_, "internvl_decoder_cancelled_total") < before + 1 && absl::Now() < until)
    absl::SleepFor(absl::Milliseconds(50));
  EXPECT_GE(Metric(decoder_, "internvl_decoder_cancelled_total"), before + 1);
  EXPECT_LT(Metric(decoder_, "internvl_decoder_tokens_total") - tokens_before, 2000) << "generation did not stop";
  ExpectAllServing();
}

TEST_F(GatewayTest, AStageThatIsDownGivesUnavailableNotAHang) {
  const std::string dir = ::internvl::testing::TempDir();
  const std::string dead = "127.0.0.1:" + std::to_string(st::PickFreePort().value());
  Proc gw = Spawn(INTERNVL_GATEWAY_BIN,
                  {"--model", *fixtures_ + "/tiny-qwen2", "--preprocess-addr", preprocess_->target(), "--vision-addr",
                   encoder_->target(), "--decoder-addr", dead, "--deadline-ms", "5000", "--retries", "2"},
                  dir + "/gw_dead_decoder.log");
  ASSERT_TRUE(st::WaitForServing(gw.target(), "internvl.v1.InternVL", gw.process.get(), kStartTimeout).ok());
  ChatRequest r;
  r.question = "Hello";
  r.generation.max_new_tokens = 2;
  ChatClient client(gw.target());
  const auto start = absl::Now();
  auto result = client.Chat(r, nullptr, absl::Seconds(30));
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kUnavailable) << result.status();
  EXPECT_THAT(result.status().message(), HasSubstr("decoder"));
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
  gw.process->Signal(SIGTERM);
  EXPECT_EQ(gw.process->Wait(absl::Seconds(10)).value_or(-1), 0);
}

// A video of more frames than one Encode call takes (the encoders' --max-tiles
// + 1) is split over several calls and answers as in-process.
TEST_F(GatewayTest, VideoFramesAreSplitOverEncodeCallsOfTheEncodersSize) {
  const std::string dir = ::internvl::testing::TempDir();
  const std::string model = *fixtures_ + "/tiny-qwen2";
  Proc vision =
      Spawn(INTERNVL_VISION_ENCODER_BIN, {"--model", model, "--dtype", "fp32", "--threads", "1", "--max-tiles", "3"},
            dir + "/gw_small_vision.log");
  ASSERT_TRUE(
      st::WaitForServing(vision.target(), "internvl.v1.VisionEncoder", vision.process.get(), kStartTimeout).ok());
  Proc gw = Spawn(INTERNVL_GATEWAY_BIN,
                  {"--model", model, "--preprocess-addr", preprocess_->target(), "--vision-addr", vision.target(),
                   "--decoder-addr", decoder_->target(), "--max-tiles", "3", "--max-segments", "16"},
                  dir + "/gw_small_gateway.log");
  ASSERT_TRUE(st::WaitForServing(gw.target(), "internvl.v1.InternVL", gw.process.get(), kStartTimeout).ok());
  ChatRequest r;
  r.question = "What is happening in the video?";
  r.video = Input("video.mp4");
  r.num_segments = 10;  // 10 frames x 1 tile: calls of 4, 4 and 2
  r.generation.max_new_tokens = 8;
  auto local = pipeline_->Chat(r);
  ASSERT_TRUE(local.ok()) << local.status();
  auto remote = ChatClient(gw.target()).Chat(r, nullptr, absl::Seconds(60));
  ASSERT_TRUE(remote.ok()) << remote.status();
  EXPECT_EQ(remote->token_ids, local->token_ids);
  EXPECT_EQ(remote->frame_indices, local->frame_indices);
  EXPECT_EQ(EncodeCalls(&vision), 3);
}

// Idle Generate streams that declare tens of thousands of image rows hold no
// buffer until the rows arrive, and no more than --max-concurrent-streams are
// open at once: the next is RESOURCE_EXHAUSTED naming the flag, and a slot
// freed is usable again.
TEST_F(GatewayTest, DecoderCapsOpenStreamsAndBuffersOnlyWhatArrived) {
  const std::string dir = ::internvl::testing::TempDir();
  const std::string model = *fixtures_ + "/tiny-qwen2";
  constexpr int kCap = 3;
  Proc decoder =
      Spawn(INTERNVL_LLM_DECODER_BIN,
            {"--model", model, "--dtype", "fp32", "--threads", "1", "--max-concurrent-streams", std::to_string(kCap)},
            dir + "/gw_capped_decoder.log");
  ASSERT_TRUE(
      st::WaitForServing(decoder.target(), "internvl.v1.LlmDecoder", decoder.process.get(), kStartTimeout).ok());
  const int img_context = nlohmann::json::parse(ReadFile(model + "/expected.json"))["img_context_token_id"].get<int>();
  constexpr int kRows = 30000;  // x hidden 64 x 4 bytes: 7.3 MiB per stream if allocated up front
  auto stub = v1::LlmDecoder::NewStub(grpc::CreateChannel(decoder.target(), grpc::InsecureChannelCredentials()));
  struct Open {
    grpc::ClientContext ctx;
    std::unique_ptr<grpc::ClientReaderWriter<v1::GenerateRequest, v1::GenerateResponse>> stream;
  };
  auto open = [&] {
    auto o = std::make_unique<Open>();
    o->ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
    o->stream = stub->Generate(&o->ctx);
    v1::GenerateRequest start;
    start.mutable_start()->set_request_id("idle");
    for (int i = 0; i < kRows; ++i) start.mutable_start()->add_prompt_token_ids(img_context);
    start.mutable_start()->set_image_embedding_rows(kRows);
    start.mutable_start()->mutable_settings()->set_max_new_tokens(1);
    v1::GenerateRequest header;
    v1::TensorHeader* h = header.mutable_image_embeddings()->mutable_header();
    h->set_dtype(v1::DATA_TYPE_F32);
    h->add_shape(kRows);
    h->add_shape(64);
    h->set_total_bytes(uint64_t{kRows} * 64 * 4);
    EXPECT_TRUE(o->stream->Write(start));
    EXPECT_TRUE(o->stream->Write(header));
    return o;
  };
  const int64_t rss_before = st::ResidentBytes(decoder.process->pid()).value_or(0);
  std::vector<std::unique_ptr<Open>> idle;
  for (int i = 0; i < kCap; ++i) idle.push_back(open());
  absl::SleepFor(absl::Milliseconds(500));
  const int64_t rss_idle = st::ResidentBytes(decoder.process->pid()).value_or(0);
  EXPECT_LT(rss_idle - rss_before, int64_t{kCap} * kRows * 64 * 4 / 2)
      << "idle streams allocated their declared embeddings";
  auto refused = open();
  refused->stream->WritesDone();
  grpc::Status status = refused->stream->Finish();
  const std::string refused_message = status.error_message();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
  EXPECT_THAT(status.error_message(), HasSubstr("max_concurrent_streams"));
  // One idle stream goes away: its slot serves a new call.
  idle[0]->ctx.TryCancel();
  (void)idle[0]->stream->Finish();
  idle.erase(idle.begin());
  absl::SleepFor(absl::Milliseconds(200));
  auto again = open();
  absl::SleepFor(absl::Milliseconds(300));
  again->ctx.TryCancel();
  status = again->stream->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::CANCELLED) << status.error_message();
  for (auto& o : idle) {
    o->ctx.TryCancel();
    (void)o->stream->Finish();
  }
  EXPECT_EQ(st::HealthCheck(decoder.target(), "internvl.v1.LlmDecoder").value_or("?"), "SERVING");
  std::cout << kCap << " idle streams declaring " << kRows << " rows each: decoder RSS +"
            << (rss_idle - rss_before) / 1024 << " KiB; the next call: " << refused_message << "\n";
}

// Image rows holding NaN or infinity (F32 or BF16) are refused with
// INVALID_ARGUMENT before they reach the engine, where they would poison the
// sequence's logits; the decoder keeps serving.
TEST_F(GatewayTest, DecoderRefusesNonFiniteImageEmbeddings) {
  const std::string model = *fixtures_ + "/tiny-qwen2";
  const int img_context = nlohmann::json::parse(ReadFile(model + "/expected.json"))["img_context_token_id"].get<int>();
  auto stub = v1::LlmDecoder::NewStub(grpc::CreateChannel(decoder_->target(), grpc::InsecureChannelCredentials()));
  constexpr int kRows = 2, kHidden = 64;
  auto call = [&](v1::DataType dtype, const std::string& bytes) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
    auto stream = stub->Generate(&ctx);
    v1::GenerateRequest start;
    start.mutable_start()->set_request_id("non-finite");
    start.mutable_start()->add_prompt_token_ids(10);
    for (int i = 0; i < kRows; ++i) start.mutable_start()->add_prompt_token_ids(img_context);
    start.mutable_start()->set_image_embedding_rows(kRows);
    start.mutable_start()->mutable_settings()->set_max_new_tokens(2);
    v1::GenerateRequest rows;
    v1::TensorHeader* h = rows.mutable_image_embeddings()->mutable_header();
    h->set_dtype(dtype);
    h->add_shape(kRows);
    h->add_shape(kHidden);
    h->set_total_bytes(bytes.size());
    rows.mutable_image_embeddings()->set_data(bytes);
    EXPECT_TRUE(stream->Write(start));
    EXPECT_TRUE(stream->Write(rows));
    stream->WritesDone();
    v1::GenerateResponse reply;
    while (stream->Read(&reply)) {
    }
    return stream->Finish();
  };
  std::vector<float> f32(kRows * kHidden, 0.25f);
  auto as_bytes = [](const auto& v) {
    return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(v[0]));
  };
  grpc::Status ok = call(v1::DATA_TYPE_F32, as_bytes(f32));
  EXPECT_TRUE(ok.ok()) << ok.error_message();
  f32[77] = std::nanf("");
  grpc::Status nan = call(v1::DATA_TYPE_F32, as_bytes(f32));
  EXPECT_EQ(nan.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << nan.error_message();
  EXPECT_THAT(nan.error_message(), HasSubstr("NaN or infinite"));
  std::vector<uint16_t> bf16(kRows * kHidden, 0x3E80);  // 0.25
  bf16[100] = 0xFF80;                                   // -inf
  grpc::Status inf = call(v1::DATA_TYPE_BF16, as_bytes(bf16));
  EXPECT_EQ(inf.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << inf.error_message();
  EXPECT_EQ(st::HealthCheck(decoder_->target(), "internvl.v1.LlmDecoder").value_or("?"), "SERVING");
}

}  // namespace
}  // namespace internvl::gateway
