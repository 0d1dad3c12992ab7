// The vision half of the serving engine: the InternViT encoder shared by
// concurrent requests. Calls that arrive together (within `max_wait` of the
// first) are concatenated into one encoder forward of at most
// `max_batch_tiles` tiles and their embeddings split back, so on a GPU many
// small requests cost one batched pass. No thread of its own: the first
// waiting caller runs the batch (leader), the others wait for their rows.
// Torch-free header.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/host_tensor.h"
#include "core/vision/vision_model.h"

namespace internvl {

struct VisionBatcherOptions {
  int max_batch_tiles = 16;                         // tiles per encoder forward at most
  absl::Duration max_wait = absl::Milliseconds(2);  // how long a batch waits for company
  // CPU models: EncodeTiles normalises into the image path's kept buffers
  // (preprocess::TakeImageBuffer); one for this many tiles (max_num 12 +
  // thumbnail: 31 MB at 448) is made and faulted in at construction, so the
  // first request does not pay ~5000 page faults for it. 0: none up front.
  int prefault_tiles = 13;

  absl::Status Validate() const;
};

struct VisionBatcherStats {
  int64_t batches = 0;
  int64_t requests = 0;
  int64_t tiles = 0;
  int64_t max_batch_requests = 0;  // most requests seen in one forward
};

class VisionBatcher {
 public:
  // `model` must outlive the batcher; `options` must be valid.
  VisionBatcher(const VisionModel* model, const VisionBatcherOptions& options);

  // Normalised pixel values float32 [N, 3, S, S] (or uint8 tiles, see
  // VisionModel::ExtractFeature) -> embeddings [N, T, H] in the model's
  // compute dtype, batched with concurrent calls of the same kind. A request
  // larger than max_batch_tiles runs alone.
  absl::StatusOr<HostTensor> ExtractFeature(const HostTensor& pixel_values);
  // uint8 tiles [N, S, S, 3] (the currency between stages): normalised on
  // the host (CPU models) or on the model's device, then ExtractFeature.
  absl::StatusOr<HostTensor> EncodeTiles(const HostTensor& tiles_u8);

  const VisionModel& model() const { return *model_; }
  VisionBatcherStats stats() const;

 private:
  struct Request {
    Request(const HostTensor* p, int64_t n) : pixels(p), tiles(n) {}
    const HostTensor* pixels;
    int64_t tiles;
    bool done = false;
    absl::StatusOr<HostTensor> result = absl::UnknownError("not run");
  };
  void RunBatch(std::unique_lock<std::mutex>& lock);

  const VisionModel* const model_;
  const VisionBatcherOptions options_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Request*> queue_;
  bool busy_ = false;
  VisionBatcherStats stats_;
};

}  // namespace internvl
