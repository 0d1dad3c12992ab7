// internvl-llm-decoder: the LlmDecoder gRPC service (prompt ids + image
// embeddings -> streamed token ids). Flags live here only.
#include <string>

#include "core/hub/hub_download.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "core/chat/llm_engine.h"
#include "core/chat/prompt_builder.h"
#include "core/model_path.h"
#include "services/common/flags.h"
#include "services/common/log.h"
#include "services/common/metrics.h"
#include "services/common/server.h"
#include "services/llm_decoder/llm_decoder_service.h"

ABSL_FLAG(std::string, listen, "0.0.0.0:50053", "gRPC address host:port (port 0 = any free port)");
ABSL_FLAG(int, metrics_port, 9092, "HTTP port for /metrics and /healthz (0 = any free port)");
ABSL_FLAG(std::string, model, "", "model folder or HF id in the local cache; required");
ABSL_FLAG(std::string, dtype, "bf16", "compute dtype: fp32 or bf16");
ABSL_FLAG(int, threads, 0, "torch intra-op threads (0 = all cores)");
ABSL_FLAG(int, workers, 1, "generation worker threads (the model runs one generation at a time)");
ABSL_FLAG(int, max_queued, 16, "generations waiting for a worker before RESOURCE_EXHAUSTED");
ABSL_FLAG(int, max_new_tokens_limit, 4096, "largest max_new_tokens a request may ask for");
ABSL_FLAG(int, max_prompt_tokens, 32768, "largest prompt (tokens, image tokens included)");
ABSL_FLAG(int, max_message_bytes, 64 << 20, "largest gRPC message received");
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
  LlmEngineOptions engine_options{.dtype = absl::GetFlag(FLAGS_dtype), .threads = absl::GetFlag(FLAGS_threads)};
  auto engine = LlmEngine::Load(*dir, (*prompt)->config(), engine_options);
  if (!engine.ok()) {
    LogError(absl::StrCat("loading the language model: ", engine.status().ToString()));
    return 1;
  }
  LogInfo(absl::StrCat("loaded language model from ", *dir, " (", (*engine)->dtype_name(), ")"));

  MetricsRegistry registry;
  LlmDecoderServiceOptions options;
  options.threads = absl::GetFlag(FLAGS_workers);
  options.max_queued = absl::GetFlag(FLAGS_max_queued);
  options.max_new_tokens_limit = absl::GetFlag(FLAGS_max_new_tokens_limit);
  options.max_prompt_tokens = absl::GetFlag(FLAGS_max_prompt_tokens);
  LlmDecoderService service(options, engine->get(), prompt->get(), &registry);

  RunOptions run;
  run.grpc.listen = absl::GetFlag(FLAGS_listen);
  run.grpc.max_receive_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  run.metrics_port = absl::GetFlag(FLAGS_metrics_port);
  run.grace = absl::Seconds(absl::GetFlag(FLAGS_grace_seconds));
  return RunServer("internvl.v1.LlmDecoder", run, {&service}, {"internvl.v1.LlmDecoder"}, &registry);
}
