// internvl-vision-encoder: the VisionEncoder gRPC service (tiles or images ->
// embeddings) with a Redis (or in-memory) embedding cache. Flags live here
// only; everything below takes option structs.
#include <cstdint>
#include <memory>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "core/engine/engine.h"
#include "core/hub/hub_download.h"
#include "services/common/flags.h"
#include "services/common/log.h"
#include "services/common/metrics.h"
#include "services/common/security.h"
#include "services/common/server.h"
#include "services/common/serving_limits.h"
#include "services/vision_encoder/embedder.h"
#include "services/vision_encoder/in_memory_cache.h"
#include "services/vision_encoder/redis_cache.h"
#include "services/vision_encoder/vision_encoder_service.h"
#include "services/vision_encoder/vision_model_encoder.h"

ABSL_FLAG(std::string, listen, "0.0.0.0:50052", "gRPC address host:port (port 0 = any free port)");
ABSL_FLAG(int, metrics_port, 9091, "HTTP port for /metrics and /healthz (0 = any free port)");
ABSL_FLAG(std::string, model, "", "model folder (config.json + safetensors); required");
ABSL_FLAG(std::string, dtype, "bf16", "compute dtype: fp32 or bf16");
ABSL_FLAG(std::string, device, "cpu", "where the model runs: cpu, cuda or cuda:N");
ABSL_FLAG(int, tile_batch, 4, "tiles per InternViT forward inside one encode");
ABSL_FLAG(int, threads, 4, "request worker threads (cache lookups, decoding; their encodes are batched together)");
ABSL_FLAG(int, torch_threads, 0, "torch intra-op threads (0 = all cores)");
ABSL_FLAG(int, batch_tiles, 16, "tiles of concurrent requests encoded in one forward at most");
ABSL_FLAG(int, batch_wait_ms, 2, "how long an encode waits for concurrent ones to join its batch");
ABSL_FLAG(int, max_queued, internvl::services::kDefaultLimits.max_queued,
          "requests waiting for a worker before RESOURCE_EXHAUSTED");
ABSL_FLAG(std::string, redis, "", "Redis HOST:PORT for the shared embedding cache (empty = in-memory cache)");
ABSL_FLAG(std::string, redis_password_file, "", "Redis AUTH password file (default: $INTERNVL_REDIS_PASSWORD)");
ABSL_FLAG(int64_t, cache_ttl_seconds, 86400, "Redis entry lifetime (0 = no expiry)");
ABSL_FLAG(int, redis_timeout_ms, 200, "Redis command timeout");
ABSL_FLAG(int, redis_connect_timeout_ms, 200, "Redis connect timeout");
ABSL_FLAG(int, redis_backoff_ms, 1000, "after a failed connect, treat Redis as down for this long");
ABSL_FLAG(int64_t, memory_cache_mb, 512, "in-memory cache size when --redis is empty (0 = no cache)");
ABSL_FLAG(int, max_tiles, internvl::services::kDefaultLimits.max_tiles,
          "largest max_num a request may ask for (Encode: max_tiles + 1 tiles)");
ABSL_FLAG(int, max_images, internvl::services::kDefaultLimits.max_images, "EncodeImages: images per request");
ABSL_FLAG(int64_t, max_image_bytes, internvl::services::kDefaultLimits.max_image_bytes,
          "EncodeImages: encoded bytes per image");
ABSL_FLAG(int64_t, max_pixels, internvl::services::kDefaultLimits.max_pixels, "EncodeImages: width*height per image");
ABSL_FLAG(int, default_max_num, internvl::services::kDefaultLimits.default_max_num,
          "max_num when a request leaves it 0");
ABSL_FLAG(int64_t, max_chunk_bytes, internvl::services::kDefaultLimits.max_chunk_bytes,
          "data bytes per streamed tensor chunk");
ABSL_FLAG(int, max_concurrent_streams, internvl::services::kDefaultLimits.max_concurrent_streams,
          "Encode calls open at once (each buffers its tiles)");
ABSL_FLAG(int, max_message_bytes, internvl::services::kDefaultLimits.max_message_bytes,
          "largest gRPC message received (bounds request size)");
ABSL_FLAG(std::string, tls_cert_file, "", "PEM server certificate: serve TLS (empty = plaintext)");
ABSL_FLAG(std::string, tls_key_file, "", "PEM key of --tls_cert_file");
ABSL_FLAG(std::string, tls_client_ca_file, "", "PEM CA: require client certificates it signed (mTLS)");
ABSL_FLAG(double, grace_seconds, 20, "after SIGTERM, how long in-flight calls may finish");

int main(int argc, char** argv) {
  using namespace internvl;
  using namespace internvl::services;
  BlockTerminationSignals();
  absl::SetProgramUsageMessage("The InternVL vision encoder service: tiles/images -> embeddings over gRPC.");
  NormalizedArgs args(argc, argv);
  absl::ParseCommandLine(args.argc(), args.argv());

  if (absl::GetFlag(FLAGS_model).empty()) {
    LogError("--model is required");
    return 2;
  }
  EngineOptions engine_options;
  engine_options.dtype = absl::GetFlag(FLAGS_dtype);
  engine_options.device = absl::GetFlag(FLAGS_device);
  engine_options.threads = absl::GetFlag(FLAGS_torch_threads);
  engine_options.load_llm = false;
  engine_options.vision_tile_batch = absl::GetFlag(FLAGS_tile_batch);
  engine_options.vision_batching.max_batch_tiles = absl::GetFlag(FLAGS_batch_tiles);
  engine_options.vision_batching.max_wait = absl::Milliseconds(absl::GetFlag(FLAGS_batch_wait_ms));
  auto model_dir = ::internvl::hub::ResolveOrDownloadModel(absl::GetFlag(FLAGS_model));
  if (!model_dir.ok()) {
    services::LogError(model_dir.status().ToString());
    return 1;
  }
  auto engine = InferenceEngine::Load(*model_dir, engine_options);
  if (!engine.ok()) {
    LogError(absl::StrCat("loading the vision model: ", engine.status().ToString()));
    return 1;
  }
  const VisionModel* model = (*engine)->vision_model();
  LogInfo(absl::StrCat("loaded vision model from ", absl::GetFlag(FLAGS_model), " (", engine_options.dtype,
                       ", fingerprint ", model->fingerprint(), ")"));

  std::unique_ptr<EmbeddingCache> cache;
  if (!absl::GetFlag(FLAGS_redis).empty()) {
    RedisCacheOptions redis;
    if (absl::Status s = ParseRedisAddress(absl::GetFlag(FLAGS_redis), &redis); !s.ok()) {
      LogError(s.ToString());
      return 2;
    }
    redis.ttl = absl::Seconds(absl::GetFlag(FLAGS_cache_ttl_seconds));
    auto password = ReadSecret(absl::GetFlag(FLAGS_redis_password_file), "INTERNVL_REDIS_PASSWORD");
    if (!password.ok()) {
      LogError(password.status().ToString());
      return 2;
    }
    redis.password = *password;
    redis.command_timeout = absl::Milliseconds(absl::GetFlag(FLAGS_redis_timeout_ms));
    redis.connect_timeout = absl::Milliseconds(absl::GetFlag(FLAGS_redis_connect_timeout_ms));
    redis.reconnect_backoff = absl::Milliseconds(absl::GetFlag(FLAGS_redis_backoff_ms));
    cache = std::make_unique<RedisEmbeddingCache>(redis);
  } else if (absl::GetFlag(FLAGS_memory_cache_mb) > 0) {
    cache = std::make_unique<InMemoryEmbeddingCache>(static_cast<size_t>(absl::GetFlag(FLAGS_memory_cache_mb)) << 20);
  }

  MetricsRegistry registry;
  Embedder embedder(MakeVisionEncoder((*engine)->vision()), cache.get(), &registry);
  VisionEncoderServiceOptions options;
  options.limits.max_images = absl::GetFlag(FLAGS_max_images);
  options.limits.max_image_bytes = absl::GetFlag(FLAGS_max_image_bytes);
  options.limits.max_pixels = absl::GetFlag(FLAGS_max_pixels);
  options.limits.max_tiles = absl::GetFlag(FLAGS_max_tiles);
  options.limits.default_max_num = absl::GetFlag(FLAGS_default_max_num);
  options.limits.image_size = ModelImageSize(*model);
  options.max_chunk_bytes = static_cast<size_t>(absl::GetFlag(FLAGS_max_chunk_bytes));
  options.threads = absl::GetFlag(FLAGS_threads);
  options.max_queued = absl::GetFlag(FLAGS_max_queued);
  options.model_fingerprint = absl::StrCat(model->fingerprint(), ":", engine_options.dtype);
  options.tokens_per_tile = model->num_image_token();
  options.max_concurrent_streams = absl::GetFlag(FLAGS_max_concurrent_streams);
  VisionEncoderService service(options, &embedder, &registry);

  RunOptions run;
  run.grpc.listen = absl::GetFlag(FLAGS_listen);
  run.grpc.tls = {absl::GetFlag(FLAGS_tls_cert_file), absl::GetFlag(FLAGS_tls_key_file),
                  absl::GetFlag(FLAGS_tls_client_ca_file)};
  run.grpc.max_receive_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  run.metrics_port = absl::GetFlag(FLAGS_metrics_port);
  run.grace = absl::Seconds(absl::GetFlag(FLAGS_grace_seconds));
  return RunServer("internvl.v1.VisionEncoder", run, {&service}, {"internvl.v1.VisionEncoder"}, &registry);
}
