// Request / result types of one chat() call, shared by the in-process
// pipeline (chat_pipeline.h), its reusable pieces (prompt_builder.h,
// llm_engine.h) and the serving layer. Torch-free.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/preprocess/minimonkey.h"

namespace internvl {

// Why a generation ended.
enum class FinishReason {
  kStop,       // an end token (template separator or eos) was produced
  kLength,     // max_new_tokens reached
  kCancelled,  // the caller cancelled (or went away)
};
// "stop", "length", "cancelled" (the names of the JSON outputs).
inline const char* FinishReasonName(FinishReason r) {
  switch (r) {
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kCancelled:
      return "cancelled";
  }
  return "unknown";
}

// Generation settings, with HF generate()'s meaning. Greedy unless do_sample.
struct GenerationSettings {
  int max_new_tokens = 1024;
  bool do_sample = false;
  double temperature = 1.0;
  double top_p = 1.0;
  int top_k = 50;  // 0 disables
  double repetition_penalty = 1.0;
  // OpenAI's additive penalties over the generated tokens (not in HF
  // generate(); core/llm/sampler.h): 0 = off, in [-2, 2].
  double frequency_penalty = 0.0;
  double presence_penalty = 0.0;
  uint64_t seed = 0;
  // Stop strings (HF stop_strings; the matched text is not returned): see
  // core/tokenizer/stop_strings.h.
  std::vector<std::string> stop;
};

// What MiniMonkey's Scale Compression Mechanism did to one prompt
// (MINIMONKEY.md section 4): the block [s, s + H) of visual tokens from the
// first <IMG_CONTEXT> s kept its top H/2 by layer-1 attention, and the token
// at s + H was dropped too (the official off-by-one).
struct ScmOutcome {
  bool applied = false;
  int64_t first_image_token = -1;  // s
  int64_t high_tokens = 0;         // H
  int64_t length_before = 0;       // L
  int64_t length_after = 0;        // L - H/2 - 1
  std::vector<int> kept_offsets;   // the H/2 kept offsets from s, ascending
  std::vector<float> scores;       // the H column scores they were chosen by
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
  // Replaces the model's default system message (the official
  // `model.system_message = ...`); unset = the config's or the template's.
  std::optional<std::string> system_message;
  GenerationSettings generation;
  // MiniMonkey models only (INVALID_ARGUMENT for others): how each image is
  // tiled (both scales' ranges, the concatenation order, the scale-B rule;
  // unset = the official demo's), and whether SCM compresses the first
  // image's visual tokens before the prefill (off by default, as the
  // official code; one image, no video).
  std::optional<preprocess::MiniMonkeyOptions> minimonkey;
  bool scm = false;
};

struct ChatTimings {
  double preprocess_ms = 0;
  double vision_ms = 0;
  double queue_ms = 0;                // waiting for the engine to admit the sequence
  double prefill_ms = 0;              // admission to the first token (prompt chunks, interleaved with other streams)
  double decode_ms = 0;               // every token after the first
  double time_to_first_token_ms = 0;  // request start to the first token
  double total_ms = 0;
};

struct ChatResult {
  std::string response;        // decoded (skip special), cut at the separator, stripped
  std::vector<int> token_ids;  // generated ids (the stop id included when produced)
  FinishReason finish_reason = FinishReason::kLength;
  int prompt_tokens = 0;
  int cached_prompt_tokens = 0;  // prompt tokens whose K/V came from the prefix cache
  int num_tiles = 0;
  std::vector<int> num_patches_list;
  std::vector<int> frame_indices;  // video only
  ScmOutcome scm;                  // MiniMonkey with scm only
  ChatTimings timings;
};

}  // namespace internvl
