// The LlmDecoder gRPC service (llm_decoder.proto): prompt ids + image
// embeddings in, token ids streamed out as they are sampled. Handlers only
// validate and assemble the request on gRPC threads, then Submit it to the
// engine (core/engine/llm_engine.h), which decodes every active call
// together (continuous batching) and calls back with each token on its step
// thread; no thread blocks on a generation. A client that cancels (or whose
// deadline passes) leaves the batch at the next step and frees its KV blocks.
#pragma once

#include <cstdint>
#include <memory>

#include "core/chat/prompt_builder.h"
#include "core/engine/llm_engine.h"
#include "internvl/v1/llm_decoder.grpc.pb.h"
#include "services/common/metrics.h"
#include "services/common/stream_slots.h"

namespace internvl::services {

struct LlmDecoderServiceOptions {
  int max_new_tokens_limit = 4096;  // GenerationSettings.max_new_tokens cap
  int max_prompt_tokens = 32768;    // prompt length cap (RESOURCE_EXHAUSTED)
  int max_concurrent_streams = 256;  // Generate calls open at once (uploading or generating)
};

class LlmDecoderService : public v1::LlmDecoder::CallbackService {
 public:
  // `engine` and `prompt` (stop ids, <IMG_CONTEXT> id, detokeniser) must
  // outlive the service.
  LlmDecoderService(const LlmDecoderServiceOptions& options, LlmEngine* engine, const PromptBuilder* prompt,
                    MetricsRegistry* registry);
  ~LlmDecoderService() override;

  grpc::ServerBidiReactor<v1::GenerateRequest, v1::GenerateResponse>* Generate(
      grpc::CallbackServerContext* context) override;

  class Call;

 private:
  friend class Call;
  const LlmDecoderServiceOptions options_;
  LlmEngine* const engine_;
  const PromptBuilder* const prompt_;
  RpcMetrics metrics_;
  Counter* tokens_;
  Counter* cancelled_;
  Histogram* ttft_;
  StreamSlots slots_;
};

}  // namespace internvl::services
