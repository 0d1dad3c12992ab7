// The OpenAI-compatible HTTP face of the gateway (and of serve --all-in-one):
// POST /v1/chat/completions (plain JSON or server-sent events), GET
// /v1/models, GET /health, on its own port, over the same ChatService as the
// gRPC API: the same stages, work queue and limits, bearer tokens, drain and
// in-flight metrics. Errors have OpenAI's JSON shape and the HTTP status of
// the gRPC code the request would get over gRPC.
//
// Conversation mapping (the official chat() history): system messages
// replace the model's system message; then user / assistant turns alternate
// and end with a user message (the question); earlier pairs become the
// history. In each user message, text parts join with "\n"; its images are
// placed as chat() places them when the text has no "<image>": one image
// "<image>\n" + text, k images "Image-1: <image>\n...Image-k: <image>\n" +
// text; a text with "<image>" placeholders keeps them (one per image). Images
// of earlier turns keep their placement there, and all images go to the
// prompt in conversation order. A video (video_url, data: URL) may be in the
// last user message only, without images; frames are then prefixed
// "Frame1: <image>\n..." as chat() does for video.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "gateway/chat_service.h"
#include "internvl/v1/gateway.pb.h"
#include "nlohmann/json.hpp"
#include "services/common/security.h"

namespace httplib {
class Server;
struct Request;
struct Response;
}  // namespace httplib

namespace internvl::gateway {

struct OpenAiServerOptions {
  std::string host = "0.0.0.0";
  int port = 0;  // 0: any free port (see OpenAiServer::port)
  // The id /v1/models reports; requests may name it or any of `aliases`.
  std::string model_id;
  std::vector<std::string> aliases;
  int64_t max_body_bytes = int64_t{64} << 20;
  // file:// image URLs are read only under this directory (empty: refused).
  std::string file_root;
  // http(s):// media URLs are fetched (size-capped, 30 s) only when set: the
  // server then makes requests wherever clients point it (mind the network
  // it can reach).
  bool allow_remote_urls = false;
  int threads = 16;  // HTTP connections served at once
  // HTTPS (and client certificates) with the gRPC server's files.
  services::ServerTlsOptions tls;
};

// The id /v1/models reports for a --model value: a folder's name, or the hub
// id as given; `aliases` then holds the value itself.
OpenAiServerOptions OpenAiOptionsFor(const std::string& model_flag, const std::string& served_name);

// A parsed chat-completions request.
struct ChatCompletionRequest {
  v1::ChatRequest chat;
  std::optional<std::string> video;
  v1::VideoSettings video_settings;
  bool stream = false;
  bool include_usage = false;
};

// Body -> request. INVALID_ARGUMENT (with the offending field) for anything
// malformed, NOT_FOUND for a model this server does not serve,
// RESOURCE_EXHAUSTED past `max_images` (before any URL is decoded or fetched).
absl::StatusOr<ChatCompletionRequest> ParseChatCompletion(const nlohmann::json& body,
                                                          const OpenAiServerOptions& options, int64_t max_media_bytes,
                                                          int max_images);

// OpenAI's error body and the HTTP status for `status` (the gRPC code's;
// RESOURCE_EXHAUSTED: 429 for a busy server, IsBusy, else 400).
int HttpStatusFor(const absl::Status& status);
std::string ErrorBody(const absl::Status& status);

class OpenAiServer {
 public:
  // Binds and starts serving in the background. `service` must outlive it.
  static absl::StatusOr<std::unique_ptr<OpenAiServer>> Start(const OpenAiServerOptions& options, ChatService* service);
  ~OpenAiServer();  // Stop()

  int port() const { return port_; }
  void Stop();

 private:
  OpenAiServer() = default;
  void ChatCompletions(const httplib::Request& req, httplib::Response& res, bool authorized);

  OpenAiServerOptions options_;
  ChatService* service_ = nullptr;
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  int port_ = 0;
  int64_t created_ = 0;
};

}  // namespace internvl::gateway
