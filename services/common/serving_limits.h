// The serving limits, defined once: every server (preprocess, vision encoder,
// decoder, gateway, `internvl serve --all-in-one`) takes the ones that apply
// to it as flags of the same name with these defaults, checks them before the
// expensive work, and refuses a request past one with RESOURCE_EXHAUSTED (or
// INVALID_ARGUMENT for a malformed value) in a message naming the limit and
// its flag. docs/RELIABILITY.md lists where each is checked.
#pragma once

#include <cstdint>

#include "core/preprocess/image.h"

namespace internvl::services {

struct ServingLimits {
  // Media.
  int max_images = 16;                                      // --max-images: images per request
  int64_t max_image_bytes = int64_t{32} << 20;              // --max-image-bytes: encoded bytes per image
  int64_t max_pixels = preprocess::kDefaultMaxImagePixels;  // --max-pixels: decoded width x height
  int max_tiles = 40;                                       // --max-tiles: largest max_num (Encode: + 1)
  int default_max_num = 12;                                 // --default-max-num: max_num when 0
  int64_t max_video_bytes = int64_t{256} << 20;             // --max-video-bytes: bytes per uploaded video
  int max_segments = 64;                                    // --max-segments: video frames per request
  // Prompt and generation.
  int max_prompt_tokens = 32768;              // --max-prompt-tokens: text + image tokens
  int64_t max_text_bytes = int64_t{1} << 20;  // --max-text-bytes: question + history
  int max_new_tokens_limit = 4096;            // --max-new-tokens-limit
  // Per server: concurrency and messages.
  int max_queued = 64;                         // --max-queued: waiting before refusal
  int max_concurrent_streams = 256;            // --max-concurrent-streams: Generate / Encode
  int max_concurrent_uploads = 16;             // --max-concurrent-uploads: ChatVideo
  int max_message_bytes = 64 << 20;            // --max-message-bytes: one gRPC message
  int64_t max_chunk_bytes = int64_t{1} << 20;  // --max-chunk-bytes: one tensor chunk
};

// The defaults, for flag definitions.
inline constexpr ServingLimits kDefaultLimits{};

}  // namespace internvl::services
