#include "services/preprocess/preprocess_service.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "core/preprocess/runtime.h"
#include "core/status.h"
#include "core/video/video.h"
#include "services/common/reactors.h"
#include "services/common/sha256.h"

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
    // Copied into the reply: the tile buffer serves the next image, already
    // faulted in (preprocess::TakeImageBuffer).
    preprocess::RecycleImageBuffer(std::move(image.tiles.bytes));
    for (size_t c = 0; c < chunks.size(); ++c) {
      v1::PreprocessImagesResponse& response = out.emplace_back();
      if (c == 0) *response.mutable_image() = image.info;
      *response.mutable_tiles() = std::move(chunks[c]);
    }
  }
  return out;
}

}  // namespace

// Collects the uploaded video, then decodes and tiles it on the queue.
class PreprocessService::VideoReactor final
    : public ReadAllThenReplyReactor<v1::PreprocessVideoRequest, v1::PreprocessImagesResponse> {
 public:
  VideoReactor(grpc::CallbackServerContext* context, PreprocessService* service)
      : ReadAllThenReplyReactor(context, &service->rpc_metrics_, "PreprocessVideo"), service_(service) {
    StartReading();
  }

 private:
  absl::Status OnMessage(const v1::PreprocessVideoRequest& request) override {
    if (request.has_settings()) {
      if (messages_ > 0) return absl::InvalidArgumentError("VideoSettings are only allowed on the first message");
      settings_ = request.settings();
    }
    ++messages_;
    const int64_t limit = service_->options_.max_video_bytes;
    if (static_cast<int64_t>(bytes_.size() + request.data().size()) > limit) {
      return absl::ResourceExhaustedError(absl::StrCat("video upload exceeds the limit of ", limit, " bytes"));
    }
    bytes_ += request.data();
    return absl::OkStatus();
  }

  void OnAllReceived() override {
    const PreprocessServiceOptions& o = service_->options_;
    if (bytes_.empty()) return Fail(absl::InvalidArgumentError("the request has no video bytes"));
    if (settings_.num_segments() < 0 || settings_.max_num() < 0) {
      return Fail(absl::InvalidArgumentError("num_segments and max_num must be >= 0"));
    }
    video::VideoOptions options;
    options.num_segments = settings_.num_segments() == 0 ? video::kDefaultNumSegments : settings_.num_segments();
    options.max_num = settings_.max_num() == 0 ? 1 : settings_.max_num();
    options.image_size = o.limits.image_size;
    options.limits.max_bytes = o.max_video_bytes;
    options.limits.max_frame_pixels = o.limits.max_pixels;
    if (options.num_segments > o.max_segments) {
      return Fail(absl::ResourceExhaustedError(
          absl::StrCat("num_segments ", options.num_segments, " exceeds this server's limit of ", o.max_segments)));
    }
    if (options.max_num > o.limits.max_tiles) {
      return Fail(absl::ResourceExhaustedError(
          absl::StrCat("max_num ", options.max_num, " exceeds this server's limit of ", o.limits.max_tiles)));
    }
    absl::Status submitted = service_->queue_->Submit([this, options] { Run(options); });
    if (!submitted.ok()) Fail(submitted);
  }

  void Run(const video::VideoOptions& options) {
    if (cancelled()) return Fail(absl::CancelledError("client cancelled before decoding started"));
    const auto start = std::chrono::steady_clock::now();
    absl::StatusOr<video::VideoFrames> frames = video::LoadVideoFrames(bytes_, options);
    if (!frames.ok()) return Fail(Annotate(frames.status(), "video"));
    service_->video_seconds_->Observe(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    service_->videos_total_->Increment();
    const preprocess::Tiles& tiles = frames->tiles;
    service_->tiles_total_->Increment(tiles.count);
    const Sha256Digest digest = Sha256Of(bytes_);
    std::vector<v1::PreprocessImagesResponse> out;
    int first_tile = 0;
    for (size_t f = 0; f < frames->num_patches_list.size(); ++f) {
      const int n = frames->num_patches_list[f];
      v1::ImageTiles info;
      info.set_image_index(static_cast<int>(f));
      info.set_width(frames->info.width);
      info.set_height(frames->info.height);
      // Every frame has the same size, hence the same grid (video.h).
      info.set_grid_cols(tiles.grid.cols);
      info.set_grid_rows(tiles.grid.rows);
      info.set_has_thumbnail(tiles.has_thumbnail);
      info.set_num_patches(n);
      info.set_tile_size(tiles.size);
      info.set_media_sha256(digest.data(), digest.size());
      HostTensor frame(DType::kU8, {n, tiles.size, tiles.size, preprocess::kRgbChannels});
      std::copy_n(tiles.tile(first_tile), frame.bytes.size(), frame.bytes.begin());
      first_tile += n;
      absl::StatusOr<std::vector<v1::TensorChunk>> chunks = ChunkTensor(frame, service_->options_.max_chunk_bytes);
      if (!chunks.ok()) return Fail(chunks.status());
      for (size_t c = 0; c < chunks->size(); ++c) {
        v1::PreprocessImagesResponse& response = out.emplace_back();
        if (c == 0) *response.mutable_image() = info;
        if (out.size() == 1) {
          v1::VideoInfo* video = response.mutable_video();
          video->set_fps(frames->info.fps);
          video->set_total_frames(static_cast<int>(frames->info.frame_count));
          for (int64_t index : frames->frame_indices) video->add_frame_indices(static_cast<int>(index));
        }
        *response.mutable_tiles() = std::move((*chunks)[c]);
      }
    }
    Reply(std::move(out));
  }

  PreprocessService* service_;
  v1::VideoSettings settings_;
  int messages_ = 0;
  std::string bytes_;
};

PreprocessService::PreprocessService(const PreprocessServiceOptions& options, MetricsRegistry* registry)
    : options_(options),
      rpc_metrics_(registry, kService),
      images_total_(registry->GetCounter("internvl_preprocess_images_total", "Images decoded and tiled")),
      tiles_total_(registry->GetCounter("internvl_preprocess_tiles_total", "Tiles produced")),
      image_seconds_(registry->GetHistogram("internvl_preprocess_image_seconds", "Decode + tiling time per image",
                                            DefaultLatencyBuckets())),
      videos_total_(registry->GetCounter("internvl_preprocess_videos_total", "Videos decoded and tiled")),
      video_seconds_(registry->GetHistogram("internvl_preprocess_video_seconds", "Decode + tiling time per video",
                                            DefaultLatencyBuckets())),
      queue_(std::make_unique<WorkQueue>(
          options.threads, options.max_queued,
          registry->GetGauge("internvl_queue_depth", "Requests waiting for a worker", {{"service", kService}}),
          registry->GetGauge("internvl_busy_workers", "Workers running a request", {{"service", kService}}))) {}

PreprocessService::~PreprocessService() = default;

grpc::ServerWriteReactor<v1::PreprocessImagesResponse>* PreprocessService::PreprocessImages(
    grpc::CallbackServerContext* context, const v1::PreprocessImagesRequest* request) {
  using Reactor = grpc::ServerWriteReactor<v1::PreprocessImagesResponse>;
  if (Reactor* refused = RefuseIfDraining<Reactor>(&rpc_metrics_, "PreprocessImages")) return refused;
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

grpc::ServerBidiReactor<v1::PreprocessVideoRequest, v1::PreprocessImagesResponse>* PreprocessService::PreprocessVideo(
    grpc::CallbackServerContext* context) {
  using Reactor = grpc::ServerBidiReactor<v1::PreprocessVideoRequest, v1::PreprocessImagesResponse>;
  if (Reactor* refused = RefuseIfDraining<Reactor>(&rpc_metrics_, "PreprocessVideo")) return refused;
  return new VideoReactor(context, this);
}

}  // namespace internvl::services
