// ChatStages in this process, for `internvl serve --all-in-one`: core
// preprocessing, the vision encoder's Embedder (with its cache: in-memory, or
// Redis when given; encodes batched by the engine's VisionBatcher) and the
// engine's LlmEngine (concurrent requests decode together). Same results as
// the remote stages, minus the gRPC hops.
#pragma once

#include <string>

#include "core/chat/prompt_builder.h"
#include "core/engine/llm_engine.h"
#include "gateway/stages.h"
#include "services/preprocess/image_tiles.h"
#include "services/vision_encoder/embedder.h"

namespace internvl::gateway {

struct EmbeddedStagesOptions {
  services::ImageLimits limits;
  int64_t max_video_bytes = int64_t{256} << 20;
  // Vision weights fingerprint + dtype: part of the embedding cache key.
  std::string model_fingerprint;
};

class EmbeddedStages : public ChatStages {
 public:
  // All must outlive the stages.
  EmbeddedStages(const EmbeddedStagesOptions& options, services::Embedder* embedder, LlmEngine* engine,
                 const PromptBuilder* prompt);

  absl::StatusOr<MediaEmbeddings> EncodeImages(const v1::PreprocessImagesRequest& request,
                                               const CallState& call) override;
  absl::StatusOr<MediaEmbeddings> EncodeVideo(const std::string& video, const v1::VideoSettings& settings,
                                              const CallState& call) override;
  absl::StatusOr<GenerateOutcome> Generate(const GenerateInput& input, const TokenSink& sink,
                                           const CallState& call) override;

 private:
  EmbeddedStagesOptions options_;
  services::Embedder* embedder_;
  LlmEngine* engine_;
  const PromptBuilder* prompt_;
};

}  // namespace internvl::gateway
