// The whole InternVL model in one process: the official chat(),
// batch_chat() and the video chat of the model card. Preprocess (decode,
// dynamic tiling) -> vision encoder (extract_feature) -> template and
// tokenizer -> LLM (prefill, KV cache, streamed decode) -> response.
// Torch-free header (pimpl), so the CLI and services include it cheaply.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/config.h"

namespace internvl {

namespace tokenizer {
class Tokenizer;
}

// Generation settings, with HF generate()'s meaning. Greedy unless do_sample.
struct GenerationSettings {
  int max_new_tokens = 1024;
  bool do_sample = false;
  double temperature = 1.0;
  double top_p = 1.0;
  int top_k = 50;  // 0 disables
  double repetition_penalty = 1.0;
  uint64_t seed = 0;
};

struct ChatRequest {
  std::string question;
  // Encoded images (JPEG/PNG/...), filling the `<image>` placeholders in
  // order. With several images and no placeholder (and no history), the
  // model card's "Image-1: <image>\nImage-2: <image>\n..." prefix is added.
  std::vector<std::string> images;
  // An encoded video; exclusive with images. Frames are sampled as
  // load_video(num_segments) and prefixed "Frame1: <image>\n...".
  std::optional<std::string> video;
  int max_num = 12;       // max tiles per image (thumbnail not counted)
  int num_segments = 8;   // video frames
  int video_max_num = 1;  // tiles per video frame
  // Earlier (question, answer) turns, as chat()'s history. `history_given`
  // distinguishes chat(history=[]) from history=None: only with None (and an
  // image, and no `<image>` in the question) is "<image>\n" prepended.
  std::vector<std::pair<std::string, std::string>> history;
  bool history_given = false;
  GenerationSettings generation;
};

struct ChatTimings {
  double preprocess_ms = 0;
  double vision_ms = 0;
  double prefill_ms = 0;  // includes the first token
  double decode_ms = 0;   // every token after the first
  double total_ms = 0;
};

struct ChatResult {
  std::string response;         // decoded (skip special), cut at the separator, stripped
  std::vector<int> token_ids;   // generated ids (the stop id included when produced)
  std::string finish_reason;    // "stop", "length" or "cancelled"
  int prompt_tokens = 0;
  int num_tiles = 0;
  std::vector<int> num_patches_list;
  std::vector<int> frame_indices;  // video only
  ChatTimings timings;
};

struct PipelineOptions {
  std::string dtype = "bf16";  // "fp32" or "bf16"
  int threads = 0;             // intra-op threads; 0 = all cores
  int vision_tile_batch = 4;
  int64_t max_image_bytes = 64ll << 20;
  int max_images = 16;
  int64_t max_video_bytes = 512ll << 20;
};

// Receives streamed text deltas; return false to cancel generation.
using TextCallback = std::function<bool(absl::string_view delta)>;

class ChatPipeline {
 public:
  // `model` is a folder or an HF id in the local cache (ResolveModelPath).
  static absl::StatusOr<std::unique_ptr<ChatPipeline>> Load(const std::string& model, const PipelineOptions& options);
  ~ChatPipeline();

  // One chat() call. `on_text` (optional) gets UTF-8-safe deltas as tokens
  // are generated.
  absl::StatusOr<ChatResult> Chat(const ChatRequest& request, const TextCallback& on_text = nullptr);

  // batch_chat(): one image (or none) per question, left-padded batch.
  absl::StatusOr<std::vector<ChatResult>> BatchChat(const std::vector<ChatRequest>& requests);

  // The rendered, image-expanded prompt chat() would tokenize.
  absl::StatusOr<std::string> BuildQuery(const ChatRequest& request, const std::vector<int>& num_patches_list) const;

  const InternVLConfig& config() const;
  const tokenizer::Tokenizer& tokenizer() const;
  const std::string& model_dir() const;

  struct Impl;

 private:
  explicit ChatPipeline(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace internvl
