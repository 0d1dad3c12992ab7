// The inference engine: the vision encoder (VisionBatcher) and the language
// model (LlmEngine) of one checkpoint, loaded once and shared by every
// request of the process. `internvl chat` and batch chat (ChatPipeline), the
// all-in-one server, the vision-encoder service (vision half only) and the
// decoder service (LLM half only) all run on it.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "core/config.h"
#include "core/engine/llm_engine.h"
#include "core/engine/vision_batcher.h"
#include "core/vision/vision_model.h"

namespace internvl {

struct EngineOptions {
  std::string dtype = "bf16";  // "fp32" or "bf16" for both halves
  int threads = 0;             // intra-op threads; 0 = all cores
  std::string device = "cpu";  // "cpu", "cuda" or "cuda:N" for both halves
  bool load_vision = true;
  bool load_llm = true;
  int vision_tile_batch = 1;  // tiles per InternViT forward inside one encode
  VisionBatcherOptions vision_batching;
  LlmEngineOptions llm;  // its dtype, threads and device are overridden by the fields above
};

class InferenceEngine {
 public:
  // `model_dir` is a resolved folder (config.json + safetensors).
  static absl::StatusOr<std::unique_ptr<InferenceEngine>> Load(const std::string& model_dir,
                                                               const EngineOptions& options);

  const InternVLConfig& config() const { return config_; }
  // Null when that half was not loaded.
  VisionBatcher* vision() { return batcher_.get(); }
  const VisionModel* vision_model() const { return vision_.get(); }
  LlmEngine* llm() { return llm_.get(); }

 private:
  InternVLConfig config_;
  std::unique_ptr<VisionModel> vision_;
  std::unique_ptr<VisionBatcher> batcher_;
  std::unique_ptr<LlmEngine> llm_;
};

}  // namespace internvl
