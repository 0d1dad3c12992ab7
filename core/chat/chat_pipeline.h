// The whole InternVL model in one process: the official chat(),
// batch_chat() and the video chat of the model card, as a thin client of the
// inference engine (core/engine/engine.h). Preprocess (decode, dynamic
// tiling) -> vision encoder (batched with concurrent calls) -> template and
// tokenizer -> the LLM engine (continuous batching, paged KV cache, prefix
// reuse) -> response. Chat() may be called from several threads at once:
// their generations decode together in the engine.
// Torch-free header (pimpl), so the CLI and services include it cheaply.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/chat/chat_types.h"
#include "core/config.h"
#include "core/engine/engine.h"

namespace internvl {

namespace tokenizer {
class Tokenizer;
}

struct PipelineOptions {
  std::string dtype = "bf16";  // "fp32" or "bf16"
  int threads = 0;             // intra-op threads; 0 = all cores
  std::string device = "cpu";  // "cpu", "cuda" or "cuda:N" (core/nn/device.h)
  int vision_tile_batch = 1;
  int64_t max_image_bytes = 64ll << 20;
  int max_images = 16;
  int64_t max_video_bytes = 512ll << 20;
  int max_tiles = 40;             // largest max_num (RESOURCE_EXHAUSTED above)
  int max_prompt_tokens = 32768;  // text + image tokens, checked before the vision encoder
  // Serve the model as MiniMonkey (its tiling, SCM on request) even when its
  // config.json does not name MiniMonkey (an InternVL2-2B-layout folder).
  bool minimonkey = false;
  // The LLM engine: KV budget, batching (its dtype/threads come from above).
  LlmEngineOptions llm;
  VisionBatcherOptions vision_batching;

  static PipelineOptions Of(std::string dtype, int threads) {
    PipelineOptions o;
    o.dtype = std::move(dtype);
    o.threads = threads;
    return o;
  }
};

// Receives streamed text deltas; return false to cancel generation.
using TextCallback = std::function<bool(absl::string_view delta)>;

class ChatPipeline {
 public:
  // `model` is a folder or an HF id, downloaded into the HF cache when
  // missing (core/hub; HF_HUB_OFFLINE=1 keeps it offline).
  static absl::StatusOr<std::unique_ptr<ChatPipeline>> Load(const std::string& model, const PipelineOptions& options);
  ~ChatPipeline();

  // One chat() call. `on_text` (optional) gets UTF-8-safe deltas as tokens
  // are generated.
  absl::StatusOr<ChatResult> Chat(const ChatRequest& request, const TextCallback& on_text = nullptr);

  // batch_chat(): one image (or none) per question. The questions decode
  // together in the engine, each as its own sequence (what the reference's
  // left-padded batch computes: positions cumsum(mask) - 1, pads masked).
  absl::StatusOr<std::vector<ChatResult>> BatchChat(const std::vector<ChatRequest>& requests);

  // The rendered, image-expanded prompt chat() would tokenize.
  absl::StatusOr<std::string> BuildQuery(const ChatRequest& request, const std::vector<int>& num_patches_list) const;

  const InternVLConfig& config() const;
  // Served as MiniMonkey (its config names it, or PipelineOptions::minimonkey).
  bool minimonkey() const;
  const tokenizer::Tokenizer& tokenizer() const;
  const std::string& model_dir() const;
  InferenceEngine& engine();

  struct Impl;

 private:
  explicit ChatPipeline(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace internvl
