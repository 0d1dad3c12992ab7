#include "services/preprocess/preprocess_service.h"

#include <chrono>

#include "core/status.h"
#include "services/common/reactors.h"

namespace internvl::services {
namespace {

constexpr char kService[] = "preprocess";

// Tiles every image of `request` and lays out the reply stream: per image,
// ImageTiles on the first message with the first chunk, then the rest.
absl::StatusOr<std::vector<v1::PreprocessImagesResponse>> TileAll(const v1::PreprocessImagesRequest& request,
                                                                  const preprocess::TilingOptions& tiling,
                                                                  const PreprocessServiceOptions& options,
                                                                  Counter* tiles_total, Histogram* image_seconds) {
  std::vector<v1::PreprocessImagesResponse> out;
  for (int i = 0; i < request.images_size(); ++i) {
    const auto start = std::chrono::steady_clock::now();
    INTERNVL_ASSIGN_OR_RETURN(TiledImage image, TileImage(request.images(i), i, tiling, options.limits));
    image_seconds->Observe(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    tiles_total->Increment(image.info.num_patches());
    INTERNVL_ASSIGN_OR_RETURN(std::vector<v1::TensorChunk> chunks, ChunkTensor(image.tiles, options.max_chunk_bytes));
    for (size_t c = 0; c < chunks.size(); ++c) {
      v1::PreprocessImagesResponse& response = out.emplace_back();
      if (c == 0) *response.mutable_image() = image.info;
      *response.mutable_tiles() = std::move(chunks[c]);
    }
  }
  return out;
}

}  // namespace

PreprocessService::PreprocessService(const PreprocessServiceOptions& options, MetricsRegistry* registry)
    : options_(options),
      rpc_metrics_(registry, kService),
      images_total_(registry->GetCounter("internvl_preprocess_images_total", "Images decoded and tiled")),
      tiles_total_(registry->GetCounter("internvl_preprocess_tiles_total", "Tiles produced")),
      image_seconds_(registry->GetHistogram("internvl_preprocess_image_seconds", "Decode + tiling time per image",
                                            DefaultLatencyBuckets())),
      queue_(std::make_unique<WorkQueue>(
          options.threads, options.max_queued,
          registry->GetGauge("internvl_queue_depth", "Requests waiting for a worker", {{"service", kService}}),
          registry->GetGauge("internvl_busy_workers", "Workers running a request", {{"service", kService}}))) {}

PreprocessService::~PreprocessService() = default;

grpc::ServerWriteReactor<v1::PreprocessImagesResponse>* PreprocessService::PreprocessImages(
    grpc::CallbackServerContext* context, const v1::PreprocessImagesRequest* request) {
  auto* reactor = new WriteReactor<v1::PreprocessImagesResponse>(context, &rpc_metrics_, "PreprocessImages");
  absl::Status valid = ValidateImages(*request, options_.limits);
  absl::StatusOr<preprocess::TilingOptions> tiling = ResolveTiling(request->tiling(), options_.limits);
  if (!valid.ok() || !tiling.ok()) {
    reactor->Fail(!valid.ok() ? valid : tiling.status());
    return reactor;
  }
  // The request outlives the reactor's work: gRPC keeps it until OnDone.
  const absl::Status submitted = queue_->Submit([this, reactor, request, tiling = *tiling] {
    if (reactor->cancelled()) {
      reactor->Fail(absl::CancelledError("client cancelled before preprocessing started"));
      return;
    }
    auto responses = TileAll(*request, tiling, options_, tiles_total_, image_seconds_);
    if (!responses.ok()) {
      reactor->Fail(responses.status());
      return;
    }
    images_total_->Increment(request->images_size());
    reactor->Reply(std::move(*responses));
  });
  if (!submitted.ok()) reactor->Fail(submitted);
  return reactor;
}

}  // namespace internvl::services
