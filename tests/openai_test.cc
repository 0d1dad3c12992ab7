// The OpenAI-compatible HTTP API (gateway/openai_server.h) end to end: the
// three stage services + the gateway, and `internvl serve --all-in-one`, as
// real processes with --openai-port and a bearer token. For each server:
//   - a text chat, an image chat (data: URL) and a two-turn chat with the
//     image in the first turn give the gRPC API's answer for the same
//     conversation (text and token ids; tiny Qwen2, fp32, greedy);
//   - the streamed text (server-sent events) equals the non-streamed one,
//     with usage at the end when asked;
//   - a malformed body, an oversized body, a wrong content type, an unknown
//     model and a bad bearer token get their HTTP status and an OpenAI-shaped
//     error, and the server keeps serving;
//   - a request over a size limit is a 400 (never retried by clients), a busy
//     server's refusal a 429 with Retry-After.
#include <httplib.h>

#include <atomic>
#include <fstream>
#include <iostream>
#include <thread>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/files.h"
#include "core/status.h"
#include "core/testing/fixtures.h"
#include "gateway/client.h"
#include "gateway/openai_server.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "services/common/testing/harness.h"
#include "services/common/testing/redis_server.h"

namespace internvl::gateway {
namespace {

namespace st = ::internvl::services::testing;
using json = nlohmann::json;

constexpr char kToken[] = "openai-test-token";
const absl::Duration kStartTimeout = absl::Seconds(120);

struct Server {
  st::ServerProcess proc;
  int http_port = 0;
};

class OpenAiTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const auto fixtures = ::internvl::testing::FixturesDir();
    if (!fixtures) return;
    fixtures_ = new std::string(*fixtures);
    model_ = new std::string(*fixtures_ + "/tiny-qwen2");
    const std::string dir = ::internvl::testing::TempDir();
    const std::string tokens = dir + "/tokens";
    std::ofstream(tokens) << kToken << "\n";
    auto spawn = [&](const std::string& bin, std::vector<std::string> args, const std::string& name) {
      auto p = st::SpawnServer(bin, std::move(args), dir + "/" + name + ".log");
      EXPECT_TRUE(p.ok()) << p.status();
      return p.ok() ? std::move(*p) : st::ServerProcess();
    };
    preprocess_ = new st::ServerProcess(spawn(INTERNVL_PREPROCESS_BIN, {"--threads", "1"}, "preprocess"));
    encoder_ = new st::ServerProcess(
        spawn(INTERNVL_VISION_ENCODER_BIN, {"--model", *model_, "--dtype", "fp32", "--threads", "1"}, "vision"));
    decoder_ = new st::ServerProcess(
        spawn(INTERNVL_LLM_DECODER_BIN, {"--model", *model_, "--dtype", "fp32", "--threads", "1"}, "decoder"));
    const int gateway_http = st::PickFreePort().value_or(0);
    gateway_ = new Server{
        spawn(INTERNVL_GATEWAY_BIN,
              {"--model", *model_, "--preprocess-addr", preprocess_->target(), "--vision-addr", encoder_->target(),
               "--decoder-addr", decoder_->target(), "--auth-tokens-file", tokens, "--openai-port",
               std::to_string(gateway_http), "--openai-host", "127.0.0.1", "--max-message-bytes",
               std::to_string(8 << 20), "--openai-file-root", *fixtures_ + "/inputs", "--openai-allow-remote-urls"},
              "gateway"),
        gateway_http};
    const int aio_http = st::PickFreePort().value_or(0);
    all_in_one_ = new Server{
        spawn(INTERNVL_CLI_BIN,
              {"serve", "--all-in-one", "--model", *model_, "--dtype", "fp32", "--threads", "1", "--auth-tokens-file",
               tokens, "--openai-port", std::to_string(aio_http), "--openai-host", "127.0.0.1"},
              "all_in_one"),
        aio_http};
    for (auto [p, name] : {std::pair{preprocess_, "internvl.v1.Preprocess"},
                           {encoder_, "internvl.v1.VisionEncoder"},
                           {decoder_, "internvl.v1.LlmDecoder"},
                           {&gateway_->proc, "internvl.v1.InternVL"},
                           {&all_in_one_->proc, "internvl.v1.InternVL"}}) {
      const absl::Status ready = st::WaitForServing(p->target(), name, p->process.get(), kStartTimeout);
      ASSERT_TRUE(ready.ok()) << name << ": " << ready << "\n" << p->process->ReadLog();
    }
  }
  static void TearDownTestSuite() {
    delete all_in_one_;
    delete gateway_;
    delete decoder_;
    delete encoder_;
    delete preprocess_;
  }
  void SetUp() override {
    INTERNVL_REQUIRE_FIXTURES(fixtures);
    ASSERT_NE(gateway_, nullptr);
  }

  static std::unique_ptr<httplib::Client> Http(const Server* s) {
    auto c = std::make_unique<httplib::Client>("127.0.0.1", s->http_port);
    c->set_read_timeout(120, 0);
    c->set_bearer_token_auth(kToken);
    return c;
  }
  static std::unique_ptr<ChatClient> Grpc(const Server* s) {
    ClientSecurity security;
    security.token = kToken;
    return ChatClient::Create(s->proc.target(), security).value();
  }
  static std::string DataUrl(const std::string& file) {
    return "data:image/png;base64," + absl::Base64Escape(ReadFile(*fixtures_ + "/inputs/" + file).value());
  }

  // POSTs `body`; returns (status, parsed body).
  static std::pair<int, json> Post(const Server* s, const json& body) {
    auto res = Http(s)->Post("/v1/chat/completions", body.dump(), "application/json");
    if (!res) return {-1, json()};
    return {res->status, json::parse(res->body, nullptr, false)};
  }

  // The streamed text of `body` + stream, and the last chunks.
  static std::string Stream(const Server* s, json body, json* usage, std::vector<int>* ids) {
    body["stream"] = true;
    body["stream_options"] = {{"include_usage", true}};
    auto res = Http(s)->Post("/v1/chat/completions", body.dump(), "application/json");
    EXPECT_TRUE(res);
    if (!res) return "";
    EXPECT_EQ(res->status, 200) << res->body;
    EXPECT_TRUE(absl::StartsWith(res->get_header_value("Content-Type"), "text/event-stream"));
    std::string text;
    bool done = false;
    for (absl::string_view event : absl::StrSplit(res->body, "\n\n", absl::SkipEmpty())) {
      EXPECT_TRUE(absl::ConsumePrefix(&event, "data: ")) << event;
      EXPECT_FALSE(done) << "an event after [DONE]";
      if (event == "[DONE]") {
        done = true;
        continue;
      }
      const json chunk = json::parse(event);
      EXPECT_EQ(chunk["object"], "chat.completion.chunk");
      if (chunk.contains("usage")) *usage = chunk["usage"];
      if (chunk["choices"].empty()) continue;
      const json& choice = chunk["choices"][0];
      if (choice["delta"].contains("content")) text += choice["delta"]["content"].get<std::string>();
      if (choice.contains("token_ids")) *ids = choice["token_ids"].get<std::vector<int>>();
    }
    EXPECT_TRUE(done) << "no [DONE]";
    return text;
  }

  // "Describe." about the images at `urls`, 6 tokens.
  static std::pair<int, json> ImageChat(const Server* s, const std::vector<std::string>& urls) {
    json content = json::array();
    for (const std::string& url : urls) content.push_back({{"type", "image_url"}, {"image_url", {{"url", url}}}});
    content.push_back({{"type", "text"}, {"text", "Describe."}});
    return Post(s, {{"model", "tiny-qwen2"},
                    {"max_tokens", 6},
                    {"messages", json::array({{{"role", "user"}, {"content", content}}})}});
  }

  // The conversation over both APIs: same text and ids; streamed == plain.
  static void ExpectSameAsGrpc(const Server* s, const json& messages, const ChatRequest& grpc_request,
                               const json& extra = json::object()) {
    auto expected = Grpc(s)->Chat(grpc_request);
    ASSERT_TRUE(expected.ok()) << expected.status();
    json body = {{"model", "tiny-qwen2"}, {"messages", messages}, {"max_tokens", 12}, {"temperature", 0}};
    body.update(extra);
    auto [status, reply] = Post(s, body);
    ASSERT_EQ(status, 200) << reply.dump();
    EXPECT_EQ(reply["object"], "chat.completion");
    EXPECT_EQ(reply["model"], "tiny-qwen2");
    const json& choice = reply["choices"][0];
    EXPECT_EQ(choice["message"]["role"], "assistant");
    EXPECT_EQ(choice["message"]["content"].get<std::string>(), expected->response);
    EXPECT_EQ(choice["token_ids"].get<std::vector<int>>(), expected->token_ids);
    EXPECT_EQ(choice["finish_reason"], expected->finish_reason == FinishReason::kLength ? "length" : "stop");
    EXPECT_EQ(reply["usage"]["prompt_tokens"].get<int>(), expected->prompt_tokens);
    json usage;
    std::vector<int> ids;
    EXPECT_EQ(Stream(s, body, &usage, &ids), expected->response);
    EXPECT_EQ(ids, expected->token_ids);
    EXPECT_EQ(usage, reply["usage"]);
  }

  static inline std::string* fixtures_ = nullptr;
  static inline std::string* model_ = nullptr;
  static inline st::ServerProcess* preprocess_ = nullptr;
  static inline st::ServerProcess* encoder_ = nullptr;
  static inline st::ServerProcess* decoder_ = nullptr;
  static inline Server* gateway_ = nullptr;
  static inline Server* all_in_one_ = nullptr;
};

TEST_F(OpenAiTest, ChatsGiveTheGrpcAnswersOnBothServers) {
  for (const Server* s : {gateway_, all_in_one_}) {
    SCOPED_TRACE(s == gateway_ ? "gateway" : "all-in-one");
    ChatRequest text;
    text.question = "Hello, who are you?";
    text.generation.max_new_tokens = 12;
    ExpectSameAsGrpc(s, json::array({{{"role", "user"}, {"content", "Hello, who are you?"}}}), text);
    // OpenAI's frequency and presence penalties reach the engine (through
    // the decoder service too): the gRPC answer with the same settings, and
    // not the unpenalized one (the tiny model repeats its tokens).
    ChatRequest unpenalized = text;
    unpenalized.generation.max_new_tokens = 64;
    ChatRequest penalized = unpenalized;
    penalized.generation.frequency_penalty = 0.5;
    penalized.generation.presence_penalty = 1.5;
    ExpectSameAsGrpc(s, json::array({{{"role", "user"}, {"content", "Hello, who are you?"}}}), penalized,
                     {{"max_tokens", 64}, {"frequency_penalty", 0.5}, {"presence_penalty", 1.5}});
    auto with = Grpc(s)->Chat(penalized), without = Grpc(s)->Chat(unpenalized);
    ASSERT_TRUE(with.ok()) << with.status();
    ASSERT_TRUE(without.ok()) << without.status();
    EXPECT_NE(with->token_ids, without->token_ids);

    // One image: chat()'s "<image>\n" + question.
    ChatRequest image;
    image.question = "Describe the image.";
    image.images = {ReadFile(*fixtures_ + "/inputs/img_448x448.png").value()};
    image.max_num = 6;
    image.generation.max_new_tokens = 12;
    ExpectSameAsGrpc(
        s,
        json::array(
            {{{"role", "system"}, {"content", "You are a careful assistant."}},
             {{"role", "user"},
              {"content", json::array({{{"type", "image_url"}, {"image_url", {{"url", DataUrl("img_448x448.png")}}}},
                                       {{"type", "text"}, {"text", "Describe the image."}}})}}}),
        [&] {
          ChatRequest r = image;
          r.system_message = "You are a careful assistant.";
          return r;
        }());

    // Two turns, the image in the first: it keeps its place in the history.
    ChatRequest two;
    two.question = "And what colour is it?";
    two.images = image.images;
    two.max_num = 6;
    two.history = {{"<image>\nWhat is in the image?", "A picture."}};
    two.history_given = true;
    two.generation.max_new_tokens = 12;
    ExpectSameAsGrpc(
        s,
        json::array({{{"role", "user"},
                      {"content",
                       json::array({{{"type", "text"}, {"text", "What is in the image?"}},
                                    {{"type", "image_url"}, {"image_url", {{"url", DataUrl("img_448x448.png")}}}}})}},
                     {{"role", "assistant"}, {"content", "A picture."}},
                     {{"role", "user"}, {"content", "And what colour is it?"}}}),
        two);

    // A video (vLLM's video_url part), 4 frames: the gRPC ChatVideo answer.
    ChatRequest video;
    video.question = "What happens in the video?";
    video.video = ReadFile(*fixtures_ + "/inputs/video.mp4").value();
    video.num_segments = 4;
    video.generation.max_new_tokens = 12;
    const std::string video_url = "data:video/mp4;base64," + absl::Base64Escape(*video.video);
    ExpectSameAsGrpc(
        s,
        json::array({{{"role", "user"},
                      {"content", json::array({{{"type", "video_url"}, {"video_url", {{"url", video_url}}}},
                                               {{"type", "text"}, {"text", video.question}}})}}}),
        video, {{"num_segments", 4}});
  }
}

TEST_F(OpenAiTest, BadRequestsGetTheirStatusAndAnOpenAiErrorAndTheServerKeepsServing) {
  for (const Server* s : {gateway_, all_in_one_}) {
    SCOPED_TRACE(s == gateway_ ? "gateway" : "all-in-one");
    auto expect_error = [](const httplib::Result& res, int status, absl::string_view type) {
      ASSERT_TRUE(res);
      EXPECT_EQ(res->status, status) << res->body;
      const json j = json::parse(res->body, nullptr, false);
      ASSERT_TRUE(j.is_object() && j.contains("error")) << res->body;
      EXPECT_EQ(j["error"]["type"].get<std::string>(), std::string(type)) << res->body;
      EXPECT_FALSE(j["error"]["message"].get<std::string>().empty());
    };
    const std::string ok_body = json{
        {"model", "tiny-qwen2"},
        {"messages", json::array({{{"role", "user"}, {"content", "Hi"}}})},
        {"max_tokens", 2}}.dump();
    auto http = Http(s);
    expect_error(http->Post("/v1/chat/completions", "{\"model\": \"tiny-qwen2\", \"messages\": [", "application/json"),
                 400, "invalid_request_error");
    expect_error(http->Post("/v1/chat/completions", ok_body, "text/plain"), 415, "invalid_request_error");
    expect_error(
        http->Post("/v1/chat/completions",
                   json{{"model", "gpt-4o"}, {"messages", json::array({{{"role", "user"}, {"content", "Hi"}}})}}.dump(),
                   "application/json"),
        404, "not_found_error");
    expect_error(
        http->Post("/v1/chat/completions",
                   json{{"model", "tiny-qwen2"},
                        {"messages",
                         json::array({{{"role", "user"},
                                       {"content", json::array({{{"type", "image_url"},
                                                                 {"image_url", {{"url", "https://x/y.png"}}}}})}}})}}
                       .dump(),
                   "application/json"),
        400, "invalid_request_error");
    expect_error(http->Post("/v1/chat/completions",
                            json{{"model", "tiny-qwen2"},
                                 {"messages", json::array({{{"role", "user"},
                                                            {"content", json::array({{{"type", "image_url"},
                                                                                      {"image_url",
                                                                                       {{"url",
                                                                                         "data:image/png;base64,"
                                                                                         "AAAAAAAA"}}}}})}}})}}
                                .dump(),
                            "application/json"),
                 400, "invalid_request_error");  // not an image: the preprocess stage's INVALID_ARGUMENT
    // MiniMonkey's extra fields: malformed, or sent to a model that is not
    // MiniMonkey.
    for (const json& extra :
         {json{{"minimonkey", 5}}, json{{"minimonkey", {{"ranges", {1, 2}}}}}, json{{"minimonkey", {{"order", 3}}}},
          json{{"scm", "yes"}}, json{{"scm", true}}, json{{"minimonkey", {{"order", "eval"}}}}}) {
      json body = json::parse(ok_body);
      body.update(extra);
      expect_error(http->Post("/v1/chat/completions", body.dump(), "application/json"), 400, "invalid_request_error");
    }
    httplib::Client anonymous("127.0.0.1", s->http_port);
    expect_error(anonymous.Post("/v1/chat/completions", ok_body, "application/json"), 401, "authentication_error");
    httplib::Client wrong("127.0.0.1", s->http_port);
    wrong.set_bearer_token_auth("not-the-token");
    expect_error(wrong.Post("/v1/chat/completions", ok_body, "application/json"), 401, "authentication_error");
    expect_error(wrong.Get("/v1/models"), 401, "authentication_error");
    // Penalties outside [-2, 2], and OpenAI fields this server does not
    // implement: a 400 naming the field when they ask for something; their
    // neutral values are accepted.
    for (const json& extra :
         {json{{"frequency_penalty", 2.5}}, json{{"presence_penalty", -3}}, json{{"frequency_penalty", "high"}},
          json{{"logprobs", true}}, json{{"top_logprobs", 2}}, json{{"logit_bias", {{"42", 5}}}},
          json{{"tools", json::array({{{"type", "function"}, {"function", {{"name", "f"}}}}})}},
          json{{"tool_choice", "required"}}, json{{"functions", json::array({{{"name", "f"}}})}},
          json{{"response_format", {{"type", "json_object"}}}}, json{{"response_format", 3}}}) {
      SCOPED_TRACE(extra.dump());
      json body = json::parse(ok_body);
      body.update(extra);
      auto res = http->Post("/v1/chat/completions", body.dump(), "application/json");
      expect_error(res, 400, "invalid_request_error");
      ASSERT_TRUE(res);
      EXPECT_THAT(res->body, ::testing::HasSubstr(extra.begin().key()));
    }
    {
      json body = json::parse(ok_body);
      body.update(json{{"frequency_penalty", 0},
                       {"presence_penalty", 0.0},
                       {"logprobs", false},
                       {"top_logprobs", 0},
                       {"logit_bias", json::object()},
                       {"tools", json::array()},
                       {"tool_choice", "none"},
                       {"response_format", {{"type", "text"}}},
                       {"user", "someone"},
                       {"n", 1}});
      auto [status, reply] = Post(s, body);
      EXPECT_EQ(status, 200) << reply.dump();
    }
    // Over the prompt limit (--max-prompt-tokens, 32768): a bad request,
    // 400, not the 429 of a busy server (which clients retry).
    std::string long_text;
    for (int i = 0; i < 40000; ++i) long_text += "hi ";
    expect_error(http->Post("/v1/chat/completions",
                            json{{"model", "tiny-qwen2"},
                                 {"messages", json::array({{{"role", "user"}, {"content", long_text}}})},
                                 {"max_tokens", 2}}
                                .dump(),
                            "application/json"),
                 400, "invalid_request_error");
    // Over the body limit (the gateway's --max-message-bytes; 64 MiB in the
    // all-in-one server).
    const size_t limit = s == gateway_ ? size_t{8} << 20 : size_t{64} << 20;
    expect_error(http->Post("/v1/chat/completions", std::string(limit + 1024, ' '), "application/json"), 413,
                 "invalid_request_error");
    // Still serving.
    auto models = http->Get("/v1/models");
    ASSERT_TRUE(models);
    EXPECT_EQ(models->status, 200);
    EXPECT_EQ(json::parse(models->body)["data"][0]["id"], "tiny-qwen2");
    auto health = httplib::Client("127.0.0.1", s->http_port).Get("/health");
    ASSERT_TRUE(health);
    EXPECT_EQ(health->status, 200);
    auto [status, reply] = Post(s, json::parse(ok_body));
    EXPECT_EQ(status, 200) << reply.dump();
  }
}

// The official `openai` npm client (tests/openai_client, pinned) against both
// servers: the same conversations as above, compared with the gRPC answers.
TEST_F(OpenAiTest, TheOfficialOpenAiClientGetsTheGrpcAnswers) {
  const std::string image = *fixtures_ + "/inputs/img_448x448.png";
  ChatRequest text;
  text.question = "Hello, who are you?";
  text.generation.max_new_tokens = 12;
  ChatRequest with_image;
  with_image.question = "Describe the image.";
  with_image.images = {ReadFile(image).value()};
  with_image.system_message = "You are a careful assistant.";
  with_image.generation.max_new_tokens = 12;
  ChatRequest two;
  two.question = "And what colour is it?";
  two.images = with_image.images;
  two.history = {{"<image>\nWhat is in the image?", "A picture."}};
  two.history_given = true;
  two.generation.max_new_tokens = 12;
  for (const Server* s : {gateway_, all_in_one_}) {
    SCOPED_TRACE(s == gateway_ ? "gateway" : "all-in-one");
    json expected;
    for (auto [name, request] : {std::pair{"text", &text}, {"image", &with_image}, {"two_turns", &two}}) {
      auto answer = Grpc(s)->Chat(*request);
      ASSERT_TRUE(answer.ok()) << answer.status();
      expected[name] = {
          {"response", answer->response}, {"token_ids", answer->token_ids}, {"prompt_tokens", answer->prompt_tokens}};
    }
    const std::string file = ::internvl::testing::TempDir() + "/expected.json";
    std::ofstream(file) << expected.dump();
    const auto run = ::internvl::testing::RunShell(
        absl::StrCat(INTERNVL_SOURCE_DIR, "/tests/openai_client/run.sh http://127.0.0.1:", s->http_port, "/v1 ", kToken,
                     " ", file, " ", image));
    if (run.exit_code == 77 && !::internvl::testing::InCI()) GTEST_SKIP() << run.err;
    EXPECT_EQ(run.exit_code, 0) << run.out << run.err;
    std::cout << run.out;
  }
}

// The same refusals as an operator sees them with curl (status, OpenAI
// error type), on the gateway.
TEST_F(OpenAiTest, CurlSeesTheErrorStatuses) {
  if (::internvl::testing::RunShell("command -v curl").exit_code != 0) {
    if (::internvl::testing::InCI()) FAIL() << "curl is missing";
    GTEST_SKIP() << "curl is not installed";
  }
  const std::string dir = ::internvl::testing::TempDir();
  std::ofstream(dir + "/big.json") << std::string((8 << 20) + 1024, ' ');
  const std::string url = absl::StrCat("http://127.0.0.1:", gateway_->http_port, "/v1/chat/completions");
  const std::string ok = R"({"model": "tiny-qwen2", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})";
  const std::string bearer = absl::StrCat("-H 'Authorization: Bearer ", kToken, "' ");
  const std::string json_type = "-H 'Content-Type: application/json' ";
  struct Case {
    const char* what;
    std::string args;
    int status;
    const char* type;
  };
  for (const Case& c : std::vector<Case>{
           {"malformed body", bearer + json_type + "-d '{\"model\": '", 400, "invalid_request_error"},
           {"oversize body", bearer + json_type + "--data-binary @" + dir + "/big.json", 413, "invalid_request_error"},
           {"wrong content type", bearer + "-H 'Content-Type: text/plain' -d '" + ok + "'", 415,
            "invalid_request_error"},
           {"unknown model", bearer + json_type + "-d '{\"model\": \"gpt-4o\", \"messages\": []}'", 404,
            "not_found_error"},
           {"bad bearer token", "-H 'Authorization: Bearer nope' " + json_type + "-d '" + ok + "'", 401,
            "authentication_error"},
           {"a good request after them", bearer + json_type + "-d '" + ok + "'", 200, ""}}) {
    const auto r = ::internvl::testing::RunShell(
        absl::StrCat("curl -s -o ", dir, "/body -w '%{http_code}' ", c.args, " ", url, " && cat ", dir, "/body"));
    ASSERT_EQ(r.exit_code, 0) << c.what << ": " << r.err;
    EXPECT_EQ(r.out.substr(0, 3), std::to_string(c.status)) << c.what << ": " << r.out;
    const json body = json::parse(r.out.substr(3), nullptr, false);
    if (c.status == 200) {
      EXPECT_EQ(body["object"], "chat.completion") << r.out;
    } else {
      ASSERT_TRUE(body.is_object() && body.contains("error")) << c.what << ": " << r.out;
      EXPECT_EQ(body["error"]["type"].get<std::string>(), c.type) << c.what;
    }
  }
}

// file:// image URLs: read under --openai-file-root (the gateway here: the
// same answer as the data: URL), refused outside it and where none is set.
TEST_F(OpenAiTest, FileUrlsOnlyUnderTheConfiguredRoot) {
  auto chat = [](const Server* s, const std::string& url) { return ImageChat(s, {url}); };
  const std::string inside = "file://" + *fixtures_ + "/inputs/img_448x448.png";
  auto [status, by_file] = chat(gateway_, inside);
  ASSERT_EQ(status, 200) << by_file.dump();
  auto [data_status, by_data] = chat(gateway_, DataUrl("img_448x448.png"));
  ASSERT_EQ(data_status, 200) << by_data.dump();
  EXPECT_EQ(by_file["choices"][0]["token_ids"], by_data["choices"][0]["token_ids"]);
  for (const std::string& outside :
       {std::string("file:///etc/hostname"), "file://" + *fixtures_ + "/inputs/../tiny-qwen2/config.json"}) {
    auto [code, error] = chat(gateway_, outside);
    EXPECT_EQ(code, 403) << outside << ": " << error.dump();
    EXPECT_EQ(error["error"]["type"], "permission_error");
  }
  auto [refused, error] = chat(all_in_one_, inside);
  EXPECT_EQ(refused, 400) << error.dump();
  EXPECT_THAT(error["error"]["message"].get<std::string>(), ::testing::HasSubstr("file://"));
}

// http(s):// image URLs: fetched only where --openai-allow-remote-urls is
// set (the gateway here), from a web server in this test.
TEST_F(OpenAiTest, RemoteUrlsAreFetchedOnlyWhenAllowed) {
  const std::string png = ReadFile(*fixtures_ + "/inputs/img_448x448.png").value();
  httplib::Server web;
  std::atomic<int> fetches{0};
  web.Get("/img.png", [&](const httplib::Request&, httplib::Response& res) {
    ++fetches;
    res.set_content(png, "image/png");
  });
  const int port = web.bind_to_any_port("127.0.0.1");
  ASSERT_GT(port, 0);
  std::thread serving([&] { web.listen_after_bind(); });
  auto chat = [](const Server* s, const std::string& url) { return ImageChat(s, {url}); };
  const std::string base = absl::StrCat("http://127.0.0.1:", port);
  // More images than the server takes (--max-images, 16): refused before a
  // single one is fetched.
  auto [too_many, too_many_error] = ImageChat(gateway_, std::vector<std::string>(17, base + "/img.png"));
  const int fetches_after_refusal = fetches.load();
  auto [status, fetched] = chat(gateway_, base + "/img.png");
  auto [data_status, by_data] = chat(gateway_, DataUrl("img_448x448.png"));
  auto [missing, missing_error] = chat(gateway_, base + "/nothing.png");
  auto [refused, refused_error] = chat(all_in_one_, base + "/img.png");
  web.stop();
  serving.join();
  ASSERT_EQ(status, 200) << fetched.dump();
  ASSERT_EQ(data_status, 200) << by_data.dump();
  EXPECT_EQ(fetched["choices"][0]["token_ids"], by_data["choices"][0]["token_ids"]);
  EXPECT_EQ(too_many, 400) << too_many_error.dump();  // over a limit: not a busy server's 429
  EXPECT_EQ(fetches_after_refusal, 0);
  EXPECT_EQ(missing, 400) << missing_error.dump();
  EXPECT_THAT(missing_error["error"]["message"].get<std::string>(), ::testing::HasSubstr("404"));
  EXPECT_EQ(refused, 400) << refused_error.dump();
  EXPECT_THAT(refused_error["error"]["message"].get<std::string>(), ::testing::HasSubstr("--openai-allow-remote-urls"));
}

// RESOURCE_EXHAUSTED is 429 only where a retry may pass (core/status.h):
// what the servers' queues and call slots refuse is BusyError, what is over
// a size limit is not.
TEST(OpenAiErrors, OnlyABusyServerIs429) {
  EXPECT_EQ(HttpStatusFor(BusyError("3 requests already queued")), 429);
  EXPECT_EQ(json::parse(ErrorBody(BusyError("x")))["error"]["type"], "rate_limit_error");
  // Annotated on its way (a stage's name before it): still busy.
  EXPECT_EQ(HttpStatusFor(Annotate(BusyError("x"), "llm decoder")), 429);
  const absl::Status too_large = absl::ResourceExhaustedError("the prompt is 40001 tokens, over the limit of 32768");
  EXPECT_EQ(HttpStatusFor(too_large), 400);
  EXPECT_EQ(json::parse(ErrorBody(too_large))["error"]["type"], "invalid_request_error");
  EXPECT_EQ(json::parse(ErrorBody(too_large))["error"]["code"], "resource_exhausted");
  EXPECT_EQ(HttpStatusFor(absl::UnavailableError("shutting down")), 503);
}

// A real busy server: one sequence at a time (--max-num-seqs 1) and one
// waiting (--max-queued 1), eight requests of 4000 tokens at once (~0.4 s
// each here): those that find the queue full get 429, Retry-After and a
// rate_limit_error; the others are answered; the server keeps serving.
TEST_F(OpenAiTest, ABusyServerAnswers429WithRetryAfter) {
  const int port = st::PickFreePort().value_or(0);
  const std::string dir = ::internvl::testing::TempDir();
  auto spawned = st::SpawnServer(
      INTERNVL_CLI_BIN,
      {"serve", "--all-in-one", "--model", *model_, "--dtype", "fp32", "--threads", "1", "--max-num-seqs", "1",
       "--max-queued", "1", "--openai-port", std::to_string(port), "--openai-host", "127.0.0.1"},
      dir + "/busy.log");
  ASSERT_TRUE(spawned.ok()) << spawned.status();
  Server busy{std::move(*spawned), port};
  const absl::Status ready =
      st::WaitForServing(busy.proc.target(), "internvl.v1.InternVL", busy.proc.process.get(), kStartTimeout);
  ASSERT_TRUE(ready.ok()) << ready << "\n" << busy.proc.process->ReadLog();
  const std::string body = json{
      {"model", "tiny-qwen2"},
      {"messages", json::array({{{"role", "user"}, {"content", "Hello"}}})},
      {"max_tokens", 4000}}.dump();
  constexpr int kRequests = 8;
  std::vector<int> status(kRequests, -1);
  std::vector<std::string> retry_after(kRequests), error_type(kRequests);
  std::vector<std::thread> clients;
  for (int i = 0; i < kRequests; ++i) {
    clients.emplace_back([&, i] {
      httplib::Client c("127.0.0.1", port);
      c.set_read_timeout(120, 0);
      auto res = c.Post("/v1/chat/completions", body, "application/json");
      if (!res) return;
      status[i] = res->status;
      retry_after[i] = res->get_header_value("Retry-After");
      const json j = json::parse(res->body, nullptr, false);
      if (j.is_object() && j.contains("error")) error_type[i] = j["error"]["type"].get<std::string>();
    });
  }
  for (std::thread& t : clients) t.join();
  int answered = 0, refused = 0;
  for (int i = 0; i < kRequests; ++i) {
    SCOPED_TRACE(i);
    if (status[i] == 200) {
      ++answered;
      continue;
    }
    EXPECT_EQ(status[i], 429);
    EXPECT_EQ(retry_after[i], "1");
    EXPECT_EQ(error_type[i], "rate_limit_error");
    ++refused;
  }
  EXPECT_GE(answered, 1);
  EXPECT_GE(refused, 1);
  httplib::Client c("127.0.0.1", port);
  auto again = c.Post("/v1/chat/completions",
                      json{{"model", "tiny-qwen2"},
                           {"messages", json::array({{{"role", "user"}, {"content", "Hi"}}})},
                           {"max_tokens", 2}}
                          .dump(),
                      "application/json");
  ASSERT_TRUE(again);
  EXPECT_EQ(again->status, 200) << again->body;
}

}  // namespace
}  // namespace internvl::gateway
