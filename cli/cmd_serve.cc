// `internvl serve --all-in-one`: the public InternVL API (gateway.proto) with
// every stage in this process (EmbeddedStages) on one inference engine:
// concurrent requests decode together (continuous batching, paged KV cache,
// prefix reuse) and their tiles are encoded in shared vision forwards; no
// gRPC hops between stages, an in-memory embedding cache unless --redis is
// given. The embedded default for a single machine; the same API as
// internvl-gateway.
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cli/args.h"
#include "cli/chat_flags.h"
#include "cli/command.h"
#include "core/chat/prompt_builder.h"
#include "core/engine/engine.h"
#include "core/hub/hub_download.h"
#include "core/model_path.h"
#include "gateway/chat_service.h"
#include "gateway/embedded_stages.h"
#include "gateway/openai_server.h"
#include "services/common/engine_metrics.h"
#include "services/common/log.h"
#include "services/common/metrics.h"
#include "services/common/security.h"
#include "services/common/server.h"
#include "services/common/serving_limits.h"
#include "services/vision_encoder/embedder.h"
#include "services/vision_encoder/in_memory_cache.h"
#include "services/vision_encoder/redis_cache.h"
#include "services/vision_encoder/vision_model_encoder.h"

namespace internvl::cli {
namespace {

constexpr char kName[] = "serve";
constexpr char kSummary[] = "serve the public gRPC API: --all-in-one runs every stage in this process";

std::vector<FlagSpec> Specs() {
  std::vector<FlagSpec> specs = {
      {"all-in-one", "every stage in this process (required: the split deployment uses the service binaries)", false,
       false, ""},
      {"model", "model directory or Hugging Face id in the local cache", true, false, ""},
      {"listen", "gRPC address host:port", true, false, "0.0.0.0:50050"},
      {"metrics-port", "HTTP port for /metrics and /healthz (0 = any)", true, false, "9089"},
      {"redis", "Redis HOST:PORT for the embedding cache (default: in-memory)", true, false, ""},
      {"memory-cache-mb", "in-memory embedding cache size (0 = none)", true, false, "512"},
      {"dtype", "compute dtype: fp32 or bf16", true, false, "bf16"},
      {"threads", "intra-op threads (0 = all cores)", true, false, "0"},
      {"max-images", "images per request", true, false, "16"},
      {"max-tiles", "largest max_num", true, false, "40"},
      {"minimonkey", "serve the model as MiniMonkey even if its config does not name it", false, false, ""},
      {"max-segments", "video frames per request", true, false, "64"},
      {"max-new-tokens-limit", "largest max_new_tokens", true, false, "4096"},
      {"max-prompt-tokens", "largest prompt (text + image tokens), estimated before the vision encoder", true, false,
       "32768"},
      {"max-text-bytes", "question + history bytes per request", true, false, "1048576"},
      {"grace-seconds", "after SIGTERM, how long in-flight calls may finish", true, false, "20"},
      {"openai-port", "port of the OpenAI-compatible HTTP API (-1 = off, 0 = any)", true, false, "-1"},
      {"openai-host", "address of the OpenAI-compatible HTTP API", true, false, "0.0.0.0"},
      {"served-model-name", "model id of the HTTP API (default: the model folder's name)", true, false, ""},
      {"openai-file-root", "file:// image URLs are read under this folder only (default: refused)", true, false, ""},
      {"openai-allow-remote-urls", "fetch http(s):// media URLs of HTTP API requests (connects wherever clients say)",
       false, false, ""},
      {"tls-cert", "PEM server certificate: serve TLS", true, false, ""},
      {"tls-key", "PEM key of --tls-cert", true, false, ""},
      {"tls-client-ca", "PEM CA: require client certificates it signed (mTLS)", true, false, ""},
      {"auth-tokens-file", "bearer tokens (one per line) clients must send (default: $INTERNVL_AUTH_TOKENS)", true,
       false, ""},
      {"redis-password-file", "Redis AUTH password (default: $INTERNVL_REDIS_PASSWORD)", true, false, ""},
      {"help", "show this help", false, false, ""},
  };
  for (auto& f : EngineFlags()) specs.push_back(f);
  return specs;
}

int Run(const std::vector<std::string>& argv) {
  using namespace internvl::services;
  BlockTerminationSignals();
  const auto specs = Specs();
  int exit_code = 0;
  std::optional<Args> args = ParseCommandLine(kName, kSummary, specs, argv, &exit_code);
  if (!args) return exit_code;
  if (!args->Has("all-in-one")) {
    ReportError(kName, absl::InvalidArgumentError("only --all-in-one is served by this command; run internvl-gateway "
                                                  "and the stage services for the split deployment"));
    return 2;
  }
  auto model = args->Require("model");
  if (!model.ok()) return ReportError(kName, model.status());
  auto dir = ::internvl::hub::ResolveOrDownloadModel(*model);
  if (!dir.ok()) return ReportError(kName, dir.status());
  EngineOptions engine_options;
  if (absl::Status s = EngineOptionsFromArgs(*args, &engine_options); !s.ok()) return ReportError(kName, s);
  engine_options.vision_tile_batch = 4;
  const std::string& dtype = engine_options.dtype;
  auto metrics_port = args->GetInt("metrics-port", 9089);
  auto max_images = args->GetInt("max-images", services::kDefaultLimits.max_images);
  auto max_tiles = args->GetInt("max-tiles", services::kDefaultLimits.max_tiles);
  auto max_segments = args->GetInt("max-segments", services::kDefaultLimits.max_segments);
  auto max_new = args->GetInt("max-new-tokens-limit", services::kDefaultLimits.max_new_tokens_limit);
  auto max_prompt = args->GetInt("max-prompt-tokens", services::kDefaultLimits.max_prompt_tokens);
  auto max_text = args->GetInt("max-text-bytes", static_cast<int>(services::kDefaultLimits.max_text_bytes));
  auto cache_mb = args->GetInt("memory-cache-mb", 512);
  auto grace = args->GetDouble("grace-seconds", 20);
  for (const absl::Status& s :
       {metrics_port.status(), max_images.status(), max_tiles.status(), max_segments.status(), max_new.status(),
        cache_mb.status(), grace.status(), max_prompt.status(), max_text.status()})
    if (!s.ok()) return ReportError(kName, s);

  auto prompt = PromptBuilder::Load(*dir);
  if (!prompt.ok()) return ReportError(kName, prompt.status());
  auto engine = InferenceEngine::Load(*dir, engine_options);
  if (!engine.ok()) return ReportError(kName, engine.status());
  const VisionModel& vision = *(*engine)->vision_model();

  std::unique_ptr<EmbeddingCache> cache;
  if (auto redis_addr = args->Get("redis")) {
    RedisCacheOptions redis;
    if (absl::Status s = ParseRedisAddress(*redis_addr, &redis); !s.ok()) return ReportError(kName, s);
    auto password = ReadSecret(args->GetOr("redis-password-file", ""), "INTERNVL_REDIS_PASSWORD");
    if (!password.ok()) return ReportError(kName, password.status());
    redis.password = *password;
    cache = std::make_unique<RedisEmbeddingCache>(redis);
  } else if (*cache_mb > 0) {
    cache = std::make_unique<InMemoryEmbeddingCache>(static_cast<size_t>(*cache_mb) << 20);
  }
  MetricsRegistry registry;
  EngineMetrics engine_metrics(&registry, "all_in_one");
  (*engine)->llm()->SetObserver(&engine_metrics);
  Embedder embedder(MakeVisionEncoder((*engine)->vision()), cache.get(), &registry);
  gateway::EmbeddedStagesOptions stage_options;
  stage_options.limits.max_images = *max_images;
  stage_options.limits.max_tiles = *max_tiles;
  stage_options.limits.image_size = ModelImageSize(vision);
  stage_options.model_fingerprint = absl::StrCat(vision.fingerprint(), ":", dtype);
  gateway::EmbeddedStages stages(stage_options, &embedder, (*engine)->llm(), prompt->get());

  gateway::ChatServiceOptions options;
  options.max_images = *max_images;
  options.max_tiles = *max_tiles;
  options.max_segments = *max_segments;
  options.max_new_tokens_limit = *max_new;
  options.max_prompt_tokens = *max_prompt;
  options.max_text_bytes = *max_text;
  options.minimonkey = args->Has("minimonkey");
  auto auth = BearerAuth::Load(args->GetOr("auth-tokens-file", ""), "INTERNVL_AUTH_TOKENS");
  if (!auth.ok()) return ReportError(kName, auth.status());
  options.auth = *std::move(auth);
  // Requests in flight through the stages: enough for a full batch to decode
  // while the next ones are preprocessed and encoded.
  options.threads = engine_options.llm.max_num_seqs + 8;
  options.max_queued = static_cast<int>(engine_options.llm.max_waiting);
  gateway::ChatService service(options, prompt->get(), &stages, &registry);

  RunOptions run;
  run.grpc.listen = args->GetOr("listen", "0.0.0.0:50050");
  run.grpc.tls = {args->GetOr("tls-cert", ""), args->GetOr("tls-key", ""), args->GetOr("tls-client-ca", "")};
  run.metrics_port = *metrics_port;
  run.grace = absl::Seconds(*grace);
  auto openai_port = args->GetInt("openai-port", -1);
  if (!openai_port.ok()) return ReportError(kName, openai_port.status());
  std::unique_ptr<gateway::OpenAiServer> http;
  if (*openai_port >= 0) {
    gateway::OpenAiServerOptions o =
        gateway::OpenAiOptionsFor(args->GetOr("model", ""), args->GetOr("served-model-name", ""));
    o.host = args->GetOr("openai-host", "0.0.0.0");
    o.port = *openai_port;
    o.file_root = args->GetOr("openai-file-root", "");
    o.tls = run.grpc.tls;
    o.allow_remote_urls = args->Has("openai-allow-remote-urls");
    o.threads = options.threads + 8;
    auto started = gateway::OpenAiServer::Start(o, &service);
    if (!started.ok()) return ReportError(kName, started.status());
    http = *std::move(started);
    services::LogInfo(
        absl::StrCat("OpenAI-compatible HTTP API on port ", http->port(), ", model \"", o.model_id, "\""));
  }
  const int rc = RunServer("internvl.v1.InternVL (all-in-one)", run, {&service}, {"internvl.v1.InternVL"}, &registry);
  if (http != nullptr) http->Stop();
  (*engine)->llm()->SetObserver(nullptr);
  return rc;
}

static const bool kRegistered = RegisterCommand({kName, kSummary, &Run});

}  // namespace
}  // namespace internvl::cli
