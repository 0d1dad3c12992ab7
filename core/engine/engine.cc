#include "core/engine/engine.h"

#include "core/nn/torch_util.h"
#include "core/safetensors.h"
#include "core/status.h"

namespace internvl {

absl::StatusOr<std::unique_ptr<InferenceEngine>> InferenceEngine::Load(const std::string& model_dir,
                                                                       const EngineOptions& options) {
  INTERNVL_RETURN_IF_ERROR(options.vision_batching.Validate());
  LlmEngineOptions llm_options = options.llm;
  llm_options.dtype = options.dtype;
  llm_options.threads = options.threads;
  llm_options.device = options.device;
  if (options.load_llm) INTERNVL_RETURN_IF_ERROR(llm_options.Validate());
  auto engine = std::unique_ptr<InferenceEngine>(new InferenceEngine());
  INTERNVL_ASSIGN_OR_RETURN(engine->config_, LoadInternVLConfig(model_dir));
  SetTorchThreads(options.threads);
  if (options.load_vision) {
    INTERNVL_ASSIGN_OR_RETURN(auto store, TensorStore::OpenDir(model_dir));
    INTERNVL_ASSIGN_OR_RETURN(engine->vision_, VisionModel::Load(engine->config_, *store,
                                                                 VisionOptions{.dtype = options.dtype,
                                                                               .tile_batch = options.vision_tile_batch,
                                                                               .device = options.device}));
    engine->batcher_ = std::make_unique<VisionBatcher>(engine->vision_.get(), options.vision_batching);
  }
  if (options.load_llm) {
    INTERNVL_ASSIGN_OR_RETURN(engine->llm_, LlmEngine::Load(model_dir, engine->config_, llm_options));
  }
  return engine;
}

}  // namespace internvl
