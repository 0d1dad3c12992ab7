#include "core/engine/vision_batcher.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/preprocess/image.h"
#include "core/preprocess/runtime.h"
#include "core/preprocess/tiling.h"

namespace internvl {

absl::Status VisionBatcherOptions::Validate() const {
  if (max_batch_tiles < 1)
    return absl::InvalidArgumentError(absl::StrCat("max_batch_tiles must be >= 1, got ", max_batch_tiles));
  if (max_wait < absl::ZeroDuration() || max_wait > absl::Seconds(1))
    return absl::InvalidArgumentError("the vision batch wait must be within [0, 1 s]");
  if (prefault_tiles < 0 || prefault_tiles > 64)
    return absl::InvalidArgumentError(absl::StrCat("prefault_tiles must be within [0, 64], got ", prefault_tiles));
  return absl::OkStatus();
}

VisionBatcher::VisionBatcher(const VisionModel* model, const VisionBatcherOptions& options)
    : model_(model), options_(options) {
  if (!model_->normalizes_on_device() && options_.prefault_tiles > 0) {
    // EncodeTiles normalises into the image path's kept buffers: one for
    // prefault_tiles tiles, zero-filled (every page faulted in) now.
    const int64_t s = model_->config().image_size();
    preprocess::RecycleImageBuffer(std::vector<uint8_t>(
        static_cast<size_t>(options_.prefault_tiles * preprocess::kRgbChannels * s * s) * sizeof(float)));
  }
}

VisionBatcherStats VisionBatcher::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

absl::StatusOr<HostTensor> VisionBatcher::EncodeTiles(const HostTensor& tiles) {
  if (tiles.dtype != DType::kU8 || tiles.shape.size() != 4 || tiles.shape[3] != preprocess::kRgbChannels ||
      tiles.shape[1] != tiles.shape[2] || tiles.shape[0] < 1)
    return absl::InvalidArgumentError("tiles must be uint8 [N, S, S, 3]");
  // Off the CPU the device normalises (a quarter of the bytes cross over).
  if (model_->normalizes_on_device()) return ExtractFeature(tiles);
  const int n = static_cast<int>(tiles.shape[0]);
  const int size = static_cast<int>(tiles.shape[1]);
  HostTensor pixels;
  pixels.dtype = DType::kF32;
  pixels.shape = {n, preprocess::kRgbChannels, size, size};
  pixels.bytes = preprocess::TakeImageBuffer(static_cast<size_t>(pixels.numel()) * sizeof(float));
  preprocess::NormalizeTilesU8(tiles.data<uint8_t>(), n, size, pixels.data<float>());
  absl::StatusOr<HostTensor> result = ExtractFeature(pixels);
  preprocess::RecycleImageBuffer(std::move(pixels.bytes));
  return result;
}

absl::StatusOr<HostTensor> VisionBatcher::ExtractFeature(const HostTensor& pixel_values) {
  if ((pixel_values.dtype != DType::kF32 && pixel_values.dtype != DType::kU8) || pixel_values.shape.size() != 4 ||
      pixel_values.shape[0] < 1)
    return absl::InvalidArgumentError(
        "pixel values must be float32 [N, 3, S, S] (or uint8 tiles [N, S, S, 3]) with N >= 1");
  Request r(&pixel_values, pixel_values.shape[0]);
  std::unique_lock<std::mutex> lock(mu_);
  queue_.push_back(&r);
  cv_.notify_all();
  while (!r.done) {
    if (!busy_ && queue_.front() == &r) {
      RunBatch(lock);
    } else {
      cv_.wait(lock);
    }
  }
  return std::move(r.result);
}

void VisionBatcher::RunBatch(std::unique_lock<std::mutex>& lock) {
  busy_ = true;
  // Wait for company, up to max_wait or a full batch.
  const auto deadline = std::chrono::steady_clock::now() + absl::ToChronoNanoseconds(options_.max_wait);
  auto queued_tiles = [&] {
    int64_t t = 0;
    for (const Request* q : queue_) t += q->tiles;
    return t;
  };
  while (queued_tiles() < options_.max_batch_tiles && std::chrono::steady_clock::now() < deadline) {
    cv_.wait_until(lock, deadline);
  }
  // The head always goes; the others while the batch has room and their
  // pixel shape matches.
  std::vector<Request*> batch = {queue_.front()};
  queue_.pop_front();
  int64_t tiles = batch[0]->tiles;
  const std::vector<int64_t>& shape = batch[0]->pixels->shape;
  for (auto it = queue_.begin(); it != queue_.end();) {
    Request* q = *it;
    const bool same = q->pixels->dtype == batch[0]->pixels->dtype && q->pixels->shape.size() == shape.size() &&
                      std::equal(shape.begin() + 1, shape.end(), q->pixels->shape.begin() + 1);
    if (same && tiles + q->tiles <= options_.max_batch_tiles) {
      batch.push_back(q);
      tiles += q->tiles;
      it = queue_.erase(it);
    } else {
      ++it;
    }
  }
  lock.unlock();
  absl::StatusOr<HostTensor> out;
  if (batch.size() == 1) {
    out = model_->ExtractFeature(*batch[0]->pixels);
  } else {
    std::vector<int64_t> joined_shape = shape;
    joined_shape[0] = tiles;
    HostTensor joined(batch[0]->pixels->dtype, joined_shape);
    uint8_t* dst = joined.bytes.data();
    for (const Request* q : batch) {
      std::memcpy(dst, q->pixels->bytes.data(), q->pixels->bytes.size());
      dst += q->pixels->bytes.size();
    }
    out = model_->ExtractFeature(joined);
  }
  lock.lock();
  if (!out.ok()) {
    for (Request* q : batch) q->result = out.status();
  } else if (batch.size() == 1) {
    batch[0]->result = std::move(*out);
  } else {
    // Split [tiles, T, H] back per request.
    const int64_t per_tile = static_cast<int64_t>(out->bytes.size()) / tiles;
    int64_t offset = 0;
    for (Request* q : batch) {
      std::vector<int64_t> s = out->shape;
      s[0] = q->tiles;
      HostTensor part(out->dtype, s);
      std::memcpy(part.bytes.data(), out->bytes.data() + offset, q->tiles * per_tile);
      offset += q->tiles * per_tile;
      q->result = std::move(part);
    }
  }
  for (Request* q : batch) q->done = true;
  ++stats_.batches;
  stats_.requests += static_cast<int64_t>(batch.size());
  stats_.tiles += tiles;
  stats_.max_batch_requests = std::max<int64_t>(stats_.max_batch_requests, static_cast<int64_t>(batch.size()));
  busy_ = false;
  cv_.notify_all();
}

}  // namespace internvl
