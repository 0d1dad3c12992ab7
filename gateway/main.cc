// internvl-gateway: the public InternVL API over the remote stages
// (preprocess, vision encoder, LLM decoder). Loads the model's config and
// tokenizer only (no weights). Flags live here only.
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "core/chat/prompt_builder.h"
#include "core/hub/hub_download.h"
#include "core/model_path.h"
#include "gateway/chat_service.h"
#include "gateway/openai_server.h"
#include "gateway/remote_stages.h"
#include "services/common/flags.h"
#include "services/common/log.h"
#include "services/common/metrics.h"
#include "services/common/server.h"
#include "services/common/serving_limits.h"

ABSL_FLAG(std::string, listen, "0.0.0.0:50050", "gRPC address host:port (port 0 = any free port)");
ABSL_FLAG(int, metrics_port, 9089, "HTTP port for /metrics and /healthz (0 = any free port)");
ABSL_FLAG(std::string, model, "", "model folder or HF id (config + tokenizer only); required");
ABSL_FLAG(std::string, preprocess_addr, "127.0.0.1:50051", "Preprocess service host:port");
ABSL_FLAG(std::string, vision_addr, "127.0.0.1:50052", "VisionEncoder service host:port");
ABSL_FLAG(std::string, decoder_addr, "127.0.0.1:50053", "LlmDecoder service host:port");
ABSL_FLAG(int, deadline_ms, 300000, "deadline of each stage call (capped by the client's deadline)");
ABSL_FLAG(int, retries, 2, "extra attempts of a stage call that fails UNAVAILABLE");
ABSL_FLAG(int, retry_backoff_ms, 100, "first retry delay (doubles after each)");
// 40: the LLM decoder's default --max_num_seqs (32) decoding together, and 8
// more in the earlier stages, as `serve --all-in-one` (--max-num-seqs + 8).
// At 16, 32 text clients through the services decoded 16 at a time (220
// tokens/s and 7.9 s TTFT p50, as many tokens/s as 16 clients).
ABSL_FLAG(int, threads, 40, "requests in flight through the stages");
ABSL_FLAG(int, max_queued, internvl::services::kDefaultLimits.max_queued, "requests waiting before RESOURCE_EXHAUSTED");
ABSL_FLAG(int, max_images, internvl::services::kDefaultLimits.max_images, "images per request");
ABSL_FLAG(int64_t, max_image_bytes, internvl::services::kDefaultLimits.max_image_bytes, "encoded bytes per image");
ABSL_FLAG(int64_t, max_video_bytes, internvl::services::kDefaultLimits.max_video_bytes, "bytes per uploaded video");
ABSL_FLAG(int, max_segments, internvl::services::kDefaultLimits.max_segments, "video frames per request");
ABSL_FLAG(int, max_concurrent_uploads, internvl::services::kDefaultLimits.max_concurrent_uploads,
          "ChatVideo calls open at once (each buffers its upload)");
ABSL_FLAG(int, max_tiles, internvl::services::kDefaultLimits.max_tiles,
          "largest max_num (the vision encoders' --max_tiles)");
ABSL_FLAG(int, max_prompt_tokens, internvl::services::kDefaultLimits.max_prompt_tokens,
          "largest prompt (text + image tokens), estimated before the vision encoder");
ABSL_FLAG(int64_t, max_text_bytes, internvl::services::kDefaultLimits.max_text_bytes,
          "question + history + system message bytes per request");
ABSL_FLAG(int, max_new_tokens_limit, internvl::services::kDefaultLimits.max_new_tokens_limit, "largest max_new_tokens");
ABSL_FLAG(int, max_message_bytes, internvl::services::kDefaultLimits.max_message_bytes,
          "largest gRPC message received");
ABSL_FLAG(std::string, auth_tokens_file, "",
          "file of bearer tokens (one per line) clients must send; else $INTERNVL_AUTH_TOKENS (comma-separated)");
ABSL_FLAG(std::string, stage_tls_ca_file, "", "PEM CA of the stage services' certificates: call them over TLS");
ABSL_FLAG(std::string, stage_tls_cert_file, "", "PEM client certificate for the stage services (mTLS)");
ABSL_FLAG(std::string, stage_tls_key_file, "", "PEM key of --stage_tls_cert_file");
ABSL_FLAG(std::string, stage_tls_server_name, "", "name to check in the stages' certificates (default: the host)");
ABSL_FLAG(std::string, tls_cert_file, "", "PEM server certificate: serve TLS (empty = plaintext)");
ABSL_FLAG(std::string, tls_key_file, "", "PEM key of --tls_cert_file");
ABSL_FLAG(std::string, tls_client_ca_file, "", "PEM CA: require client certificates it signed (mTLS)");
ABSL_FLAG(int, openai_port, -1,
          "port of the OpenAI-compatible HTTP API (/v1/chat/completions, /v1/models, /health); -1 = off, 0 = any");
ABSL_FLAG(std::string, openai_host, "0.0.0.0", "address the OpenAI-compatible HTTP API listens on");
ABSL_FLAG(std::string, served_model_name, "", "model id of the HTTP API (default: the model folder's name)");
ABSL_FLAG(std::string, openai_file_root, "", "file:// image URLs are read under this folder only (empty: refused)");
ABSL_FLAG(bool, minimonkey, false,
          "serve the model as MiniMonkey (two-scale tiling, SCM on request) even if its config does not name it");
ABSL_FLAG(bool, openai_allow_remote_urls, false,
          "fetch http(s):// image/video URLs of HTTP API requests (the server then connects wherever clients say)");
ABSL_FLAG(double, grace_seconds, 20, "after SIGTERM, how long in-flight calls may finish");

int main(int argc, char** argv) {
  using namespace internvl;
  using namespace internvl::gateway;
  services::BlockTerminationSignals();
  absl::SetProgramUsageMessage(
      "The InternVL gateway: the public chat API over the preprocess, vision and decoder services.");
  services::NormalizedArgs args(argc, argv);
  absl::ParseCommandLine(args.argc(), args.argv());
  if (absl::GetFlag(FLAGS_model).empty()) {
    services::LogError("--model is required");
    return 2;
  }
  auto dir = ::internvl::hub::ResolveOrDownloadModel(absl::GetFlag(FLAGS_model));
  if (!dir.ok()) {
    services::LogError(dir.status().ToString());
    return 1;
  }
  auto prompt = PromptBuilder::Load(*dir);
  if (!prompt.ok()) {
    services::LogError(absl::StrCat("loading the tokenizer: ", prompt.status().ToString()));
    return 1;
  }
  RemoteStagesOptions remote;
  remote.preprocess_addr = absl::GetFlag(FLAGS_preprocess_addr);
  remote.vision_addr = absl::GetFlag(FLAGS_vision_addr);
  remote.decoder_addr = absl::GetFlag(FLAGS_decoder_addr);
  remote.stage_deadline = absl::Milliseconds(absl::GetFlag(FLAGS_deadline_ms));
  remote.retries = absl::GetFlag(FLAGS_retries);
  remote.backoff = absl::Milliseconds(absl::GetFlag(FLAGS_retry_backoff_ms));
  remote.max_tiles_per_encode = absl::GetFlag(FLAGS_max_tiles) + 1;
  remote.tls = {absl::GetFlag(FLAGS_stage_tls_ca_file), absl::GetFlag(FLAGS_stage_tls_cert_file),
                absl::GetFlag(FLAGS_stage_tls_key_file), absl::GetFlag(FLAGS_stage_tls_server_name)};
  auto stages = RemoteStages::Create(remote);
  if (!stages.ok()) {
    services::LogError(stages.status().ToString());
    return 2;
  }
  auto auth = services::BearerAuth::Load(absl::GetFlag(FLAGS_auth_tokens_file), "INTERNVL_AUTH_TOKENS");
  if (!auth.ok()) {
    services::LogError(auth.status().ToString());
    return 2;
  }

  ChatServiceOptions options;
  options.max_images = absl::GetFlag(FLAGS_max_images);
  options.max_image_bytes = absl::GetFlag(FLAGS_max_image_bytes);
  options.max_video_bytes = absl::GetFlag(FLAGS_max_video_bytes);
  options.max_segments = absl::GetFlag(FLAGS_max_segments);
  options.max_concurrent_uploads = absl::GetFlag(FLAGS_max_concurrent_uploads);
  options.max_tiles = absl::GetFlag(FLAGS_max_tiles);
  options.minimonkey = absl::GetFlag(FLAGS_minimonkey);
  options.max_new_tokens_limit = absl::GetFlag(FLAGS_max_new_tokens_limit);
  options.max_prompt_tokens = absl::GetFlag(FLAGS_max_prompt_tokens);
  options.max_text_bytes = absl::GetFlag(FLAGS_max_text_bytes);
  options.threads = absl::GetFlag(FLAGS_threads);
  options.auth = *std::move(auth);
  options.max_queued = absl::GetFlag(FLAGS_max_queued);
  services::MetricsRegistry registry;
  ChatService service(options, prompt->get(), stages->get(), &registry);

  services::RunOptions run;
  run.grpc.listen = absl::GetFlag(FLAGS_listen);
  run.grpc.tls = {absl::GetFlag(FLAGS_tls_cert_file), absl::GetFlag(FLAGS_tls_key_file),
                  absl::GetFlag(FLAGS_tls_client_ca_file)};
  run.grpc.max_receive_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  run.metrics_port = absl::GetFlag(FLAGS_metrics_port);
  run.grace = absl::Seconds(absl::GetFlag(FLAGS_grace_seconds));
  std::unique_ptr<OpenAiServer> http;
  if (absl::GetFlag(FLAGS_openai_port) >= 0) {
    OpenAiServerOptions o = OpenAiOptionsFor(absl::GetFlag(FLAGS_model), absl::GetFlag(FLAGS_served_model_name));
    o.host = absl::GetFlag(FLAGS_openai_host);
    o.port = absl::GetFlag(FLAGS_openai_port);
    o.file_root = absl::GetFlag(FLAGS_openai_file_root);
    o.max_body_bytes = absl::GetFlag(FLAGS_max_message_bytes);
    o.tls = run.grpc.tls;
    o.allow_remote_urls = absl::GetFlag(FLAGS_openai_allow_remote_urls);
    o.threads = options.threads + 8;
    auto started = OpenAiServer::Start(o, &service);
    if (!started.ok()) {
      services::LogError(started.status().ToString());
      return 1;
    }
    http = *std::move(started);
    services::LogInfo(
        absl::StrCat("OpenAI-compatible HTTP API on port ", http->port(), ", model \"", o.model_id, "\""));
  }
  const int rc = services::RunServer("internvl.v1.InternVL", run, {&service}, {"internvl.v1.InternVL"}, &registry);
  if (http != nullptr) http->Stop();
  return rc;
}
