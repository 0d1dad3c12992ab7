// internvl-llm-decoder: the LlmDecoder gRPC service (prompt ids + image
// embeddings -> streamed token ids). Flags live here only.
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "core/chat/prompt_builder.h"
#include "core/engine/engine.h"
#include "core/hub/hub_download.h"
#include "core/model_path.h"
#include "services/common/engine_metrics.h"
#include "services/common/flags.h"
#include "services/common/log.h"
#include "services/common/metrics.h"
#include "services/common/server.h"
#include "services/common/serving_limits.h"
#include "services/llm_decoder/llm_decoder_service.h"

ABSL_FLAG(std::string, listen, "0.0.0.0:50053", "gRPC address host:port (port 0 = any free port)");
ABSL_FLAG(int, metrics_port, 9092, "HTTP port for /metrics and /healthz (0 = any free port)");
ABSL_FLAG(std::string, model, "", "model folder or HF id in the local cache; required");
ABSL_FLAG(std::string, dtype, "bf16", "compute dtype: fp32 or bf16");
ABSL_FLAG(std::string, device, "cpu", "where the model runs: cpu, cuda or cuda:N");
ABSL_FLAG(std::string, quantize, "none",
          "LLM weights quantized at load time: none, int8 or int4 (AWQ checkpoints are 4-bit as published)");
ABSL_FLAG(
    int64_t, head_candidates, 64,
    "where the LLM layers are quantized (int8, int4, AWQ): logits per token the vocabulary head recomputes through "
    "its own weights after its 4-bit pass (0: the head in one pass, int8 or 4-bit as --quantize says, an AWQ "
    "checkpoint's own head as stored)");
ABSL_FLAG(int, threads, 0, "torch intra-op threads (0 = all cores)");
ABSL_FLAG(int64_t, kv_cache_bytes, 0, "KV cache budget in bytes (0 = --kv-cache-fraction of physical memory)");
ABSL_FLAG(double, kv_cache_fraction, 0.25, "KV cache budget as a fraction of physical memory, when no bytes given");
ABSL_FLAG(std::string, kv_cache_dtype, "auto",
          "KV cache elements: auto (the weights' dtype), bf16 or fp32 (exact where the model computes in fp32)");
ABSL_FLAG(int, block_size, 16, "positions per KV cache block (the prefix-reuse granularity)");
ABSL_FLAG(int, max_num_seqs, 32, "sequences decoding together at most (the batch)");
ABSL_FLAG(int64_t, max_batched_tokens, 512, "tokens per engine step: decodes first, then prompt chunks");
ABSL_FLAG(int64_t, max_queued, internvl::services::kDefaultLimits.max_queued,
          "generations waiting for KV blocks or a batch slot before RESOURCE_EXHAUSTED");
ABSL_FLAG(bool, prefix_caching, true, "reuse the KV blocks of identical prompt prefixes (history, images)");
ABSL_FLAG(int, max_new_tokens_limit, internvl::services::kDefaultLimits.max_new_tokens_limit,
          "largest max_new_tokens a request may ask for");
ABSL_FLAG(int, max_prompt_tokens, internvl::services::kDefaultLimits.max_prompt_tokens,
          "largest prompt (tokens, image tokens included)");
ABSL_FLAG(int, max_concurrent_streams, internvl::services::kDefaultLimits.max_concurrent_streams,
          "Generate calls open at once (each buffers its embeddings)");
ABSL_FLAG(int, max_message_bytes, internvl::services::kDefaultLimits.max_message_bytes,
          "largest gRPC message received");
ABSL_FLAG(std::string, tls_cert_file, "", "PEM server certificate: serve TLS (empty = plaintext)");
ABSL_FLAG(std::string, tls_key_file, "", "PEM key of --tls_cert_file");
ABSL_FLAG(std::string, tls_client_ca_file, "", "PEM CA: require client certificates it signed (mTLS)");
ABSL_FLAG(double, grace_seconds, 20, "after SIGTERM, how long in-flight calls may finish");

int main(int argc, char** argv) {
  using namespace internvl;
  using namespace internvl::services;
  BlockTerminationSignals();
  absl::SetProgramUsageMessage("The InternVL LLM decoder service: prompt ids + image embeddings -> tokens over gRPC.");
  NormalizedArgs args(argc, argv);
  absl::ParseCommandLine(args.argc(), args.argv());
  if (absl::GetFlag(FLAGS_model).empty()) {
    LogError("--model is required");
    return 2;
  }
  auto dir = ::internvl::hub::ResolveOrDownloadModel(absl::GetFlag(FLAGS_model));
  if (!dir.ok()) {
    LogError(dir.status().ToString());
    return 1;
  }
  auto prompt = PromptBuilder::Load(*dir);
  if (!prompt.ok()) {
    LogError(absl::StrCat("loading the tokenizer: ", prompt.status().ToString()));
    return 1;
  }
  EngineOptions engine_options;
  engine_options.dtype = absl::GetFlag(FLAGS_dtype);
  engine_options.device = absl::GetFlag(FLAGS_device);
  engine_options.threads = absl::GetFlag(FLAGS_threads);
  engine_options.load_vision = false;
  engine_options.llm.kv_cache_bytes = absl::GetFlag(FLAGS_kv_cache_bytes);
  engine_options.llm.kv_cache_fraction = absl::GetFlag(FLAGS_kv_cache_fraction);
  engine_options.llm.kv_cache_dtype = absl::GetFlag(FLAGS_kv_cache_dtype);
  engine_options.llm.block_size = absl::GetFlag(FLAGS_block_size);
  engine_options.llm.max_num_seqs = absl::GetFlag(FLAGS_max_num_seqs);
  engine_options.llm.max_batched_tokens = absl::GetFlag(FLAGS_max_batched_tokens);
  engine_options.llm.max_waiting = absl::GetFlag(FLAGS_max_queued);
  engine_options.llm.prefix_caching = absl::GetFlag(FLAGS_prefix_caching);
  engine_options.llm.quantize = absl::GetFlag(FLAGS_quantize);
  engine_options.llm.head_candidates = absl::GetFlag(FLAGS_head_candidates);
  auto engine = InferenceEngine::Load(*dir, engine_options);
  if (!engine.ok()) {
    LogError(absl::StrCat("loading the language model: ", engine.status().ToString()));
    return 1;
  }
  LlmEngine* llm = (*engine)->llm();
  const EngineStats kv = llm->stats();
  LogInfo(absl::StrCat("loaded language model from ", *dir, " (", llm->dtype_name(), "); KV cache ", kv.kv_blocks_total,
                       " blocks = ", kv.kv_capacity_tokens, " positions in ", llm->kv_cache_dtype_name()));

  MetricsRegistry registry;
  EngineMetrics engine_metrics(&registry, "llm_decoder");
  llm->SetObserver(&engine_metrics);
  LlmDecoderServiceOptions options;
  options.max_new_tokens_limit = absl::GetFlag(FLAGS_max_new_tokens_limit);
  options.max_prompt_tokens = absl::GetFlag(FLAGS_max_prompt_tokens);
  options.max_concurrent_streams = absl::GetFlag(FLAGS_max_concurrent_streams);
  LlmDecoderService service(options, llm, prompt->get(), &registry);

  RunOptions run;
  run.grpc.listen = absl::GetFlag(FLAGS_listen);
  run.grpc.tls = {absl::GetFlag(FLAGS_tls_cert_file), absl::GetFlag(FLAGS_tls_key_file),
                  absl::GetFlag(FLAGS_tls_client_ca_file)};
  run.grpc.max_receive_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  run.metrics_port = absl::GetFlag(FLAGS_metrics_port);
  run.grace = absl::Seconds(absl::GetFlag(FLAGS_grace_seconds));
  const int rc = RunServer("internvl.v1.LlmDecoder", run, {&service}, {"internvl.v1.LlmDecoder"}, &registry);
  llm->SetObserver(nullptr);
  return rc;
}
