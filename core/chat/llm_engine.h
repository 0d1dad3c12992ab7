// The LLM half of chat(), over prompt ids + image embeddings given as host
// tensors: Embed(ids), scatter the image rows into the <IMG_CONTEXT>
// positions, then llm::Generate with chat()'s stop ids (KV cache, greedy or
// sampled). The decoder service and the all-in-one server run it; the result
// equals ChatPipeline::Chat's for the same ids and embeddings. Torch-free
// header (pimpl).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/chat/chat_types.h"
#include "core/config.h"
#include "core/host_tensor.h"

namespace internvl {

struct LlmEngineOptions {
  std::string dtype = "bf16";  // "fp32" or "bf16" (EffectiveComputeDType applies)
  int threads = 0;             // intra-op threads; 0 = all cores
};

struct LlmGeneration {
  std::vector<int> token_ids;  // generated ids (the stop id included when produced)
  std::string finish_reason;   // "stop", "length" or "cancelled"
  double prefill_ms = 0;       // includes the first token
  double decode_ms = 0;
};

// INVALID_ARGUMENT for settings HF rejects: max_new_tokens < 1, temperature
// <= 0, top_p outside (0, 1], top_k < 0, repetition_penalty <= 0.
absl::Status ValidateGenerationSettings(const GenerationSettings& settings);

class LlmEngine {
 public:
  // Loads the `language_model.*` weights of the (resolved) model folder.
  static absl::StatusOr<std::unique_ptr<LlmEngine>> Load(const std::string& model_dir, const InternVLConfig& config,
                                                         const LlmEngineOptions& options);
  ~LlmEngine();

  // One generation (batch of one). `image_embeddings`: the image rows in
  // prompt order, [rows, H] or [n, T, H] in F32/BF16/F16 (cast to the
  // model's dtype); empty (numel 0) for a text-only prompt. The row count
  // must equal the number of `img_context_id` ids in `prompt_ids`.
  // `on_token` (optional) gets each id as it is chosen; false cancels.
  // Calls are serialised (the model's rope state is not thread-safe).
  absl::StatusOr<LlmGeneration> Generate(const std::vector<int64_t>& prompt_ids, const HostTensor& image_embeddings,
                                         int64_t img_context_id, const std::vector<int64_t>& stop_ids,
                                         const GenerationSettings& settings,
                                         const std::function<bool(int)>& on_token = nullptr);

  int64_t hidden_size() const;
  int64_t vocab_size() const;
  // "fp32" / "bf16": the dtype actually computed in.
  std::string dtype_name() const;

  struct Impl;

 private:
  explicit LlmEngine(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace internvl
