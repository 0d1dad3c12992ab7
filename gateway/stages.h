// The three stages behind the public API, as one small interface (STYLE.md
// rule 6) with two implementations chosen in main: RemoteStages (gRPC to the
// preprocess, vision encoder and decoder services, with deadlines and
// retries) and EmbeddedStages (everything in this process: the all-in-one
// server). The ChatService orchestrates either the same way, so both paths
// produce the same prompt ids and tokens.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/chat/chat_types.h"
#include "core/host_tensor.h"
#include "internvl/v1/preprocess.pb.h"
#include "services/common/streaming_reactor.h"

namespace internvl::gateway {

// Image (or video frame) embeddings of one request, in prompt order.
struct MediaEmbeddings {
  std::vector<int> num_patches;    // tiles per image / frame
  HostTensor embeddings;           // [rows, H], rows = sum(num_patches) * tokens_per_tile
  int cached_images = 0;           // images whose embeddings came from the cache
  std::vector<int> frame_indices;  // video only
  double preprocess_ms = 0;
  double vision_ms = 0;
};

struct GenerateInput {
  std::string request_id;
  std::vector<int> prompt_ids;
  GenerationSettings settings;  // validated, seed resolved
  const HostTensor* embeddings = nullptr;
  int64_t scm_high_tokens = 0;  // MiniMonkey's SCM block (0: off)
};

struct GenerateOutcome {
  std::vector<int> token_ids;  // stop token excluded
  std::optional<int> stop_token_id;
  FinishReason finish_reason = FinishReason::kLength;
  int cached_prompt_tokens = 0;  // served from the decoder's prefix cache
  double queue_ms = 0;
  double prefill_ms = 0;
  double decode_ms = 0;
  ScmOutcome scm;         // with scm_high_tokens (kept offsets not filled remotely)
  int prompt_tokens = 0;  // as prefilled (after SCM); 0 = not reported
};

// Receives the ids sampled since the last call; false stops generation.
using TokenSink = std::function<bool(const std::vector<int>& ids)>;

// Per-request call state: the client's cancellation and the deadline.
struct CallState {
  services::CallCancellation* cancellation = nullptr;
  absl::Time deadline = absl::InfiniteFuture();
  // Called with the request's total tile count once it is known (after
  // tiling, before the vision encoder runs): an error (the prompt would be
  // over the token limit) stops the request there. May be empty.
  std::function<absl::Status(int64_t tiles)> check_tiles;
  absl::Status CheckTiles(int64_t tiles) const { return check_tiles ? check_tiles(tiles) : absl::OkStatus(); }
};

class ChatStages {
 public:
  virtual ~ChatStages() = default;
  // Decode + tile + encode each image of `request` (tiling.max_num applies to
  // each image).
  virtual absl::StatusOr<MediaEmbeddings> EncodeImages(const v1::PreprocessImagesRequest& request,
                                                       const CallState& call) = 0;
  // Sample num_segments frames (max_num tiles each) and encode them.
  virtual absl::StatusOr<MediaEmbeddings> EncodeVideo(const std::string& video, const v1::VideoSettings& settings,
                                                      const CallState& call) = 0;
  // Generate from prompt ids + embeddings, streaming ids to `sink`.
  virtual absl::StatusOr<GenerateOutcome> Generate(const GenerateInput& input, const TokenSink& sink,
                                                   const CallState& call) = 0;
};

}  // namespace internvl::gateway
