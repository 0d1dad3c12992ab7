// The LlmDecoder gRPC service (llm_decoder.proto): prompt ids + image
// embeddings in, token ids streamed out as they are sampled. Handlers only
// validate and assemble the request on gRPC threads; generation runs on the
// service's WorkQueue through LlmEngine (core/chat/llm_engine.h), which
// serialises calls to the model. A client that cancels (or whose deadline
// passes) stops generation at the next token.
#pragma once

#include <cstdint>
#include <memory>

#include "core/chat/llm_engine.h"
#include "core/chat/prompt_builder.h"
#include "internvl/v1/llm_decoder.grpc.pb.h"
#include "services/common/metrics.h"
#include "services/common/work_queue.h"

namespace internvl::services {

struct LlmDecoderServiceOptions {
  int threads = 1;                  // generation workers (calls are serialised on the model)
  int max_queued = 16;              // waiting generations before RESOURCE_EXHAUSTED
  int max_new_tokens_limit = 4096;  // GenerationSettings.max_new_tokens cap
  int max_prompt_tokens = 32768;    // prompt length cap (RESOURCE_EXHAUSTED)
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
  std::unique_ptr<WorkQueue> queue_;
};

}  // namespace internvl::services
