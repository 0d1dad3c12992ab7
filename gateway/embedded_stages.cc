#include "gateway/embedded_stages.h"

#include <algorithm>
#include <chrono>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "services/common/sha256.h"
#include "services/vision_encoder/embedding_cache.h"
#ifdef INTERNVL_HAVE_VIDEO
#include "core/video/video.h"
#endif

namespace internvl::gateway {

using Clock = std::chrono::steady_clock;

namespace {
double MsSince(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

absl::Status Append(const HostTensor& e, MediaEmbeddings* out) {
  if (e.shape.empty()) return absl::InternalError("embeddings without a shape");
  if (out->embeddings.shape.empty()) out->embeddings = HostTensor(e.dtype, {0, e.shape.back()});
  out->embeddings.bytes.insert(out->embeddings.bytes.end(), e.bytes.begin(), e.bytes.end());
  out->embeddings.shape[0] += e.numel() / e.shape.back();
  return absl::OkStatus();
}
}  // namespace

EmbeddedStages::EmbeddedStages(const EmbeddedStagesOptions& options, services::Embedder* embedder, LlmEngine* engine,
                               const PromptBuilder* prompt)
    : options_(options), embedder_(embedder), engine_(engine), prompt_(prompt) {}

absl::StatusOr<MediaEmbeddings> EmbeddedStages::EncodeImages(const v1::PreprocessImagesRequest& request,
                                                             const CallState& call) {
  MediaEmbeddings out;
  INTERNVL_RETURN_IF_ERROR(services::ValidateImages(request, options_.limits));
  INTERNVL_ASSIGN_OR_RETURN(preprocess::TilingOptions tiling,
                            services::ResolveTiling(request.tiling(), options_.limits));
  const auto t0 = Clock::now();
  int64_t tiles_so_far = 0;
  for (int i = 0; i < request.images_size(); ++i) {
    if (call.cancellation && call.cancellation->cancelled()) return absl::CancelledError("the client cancelled");
    const std::string& bytes = request.images(i);
    services::EmbeddingKeyParts parts;
    parts.media_sha256 = services::Sha256Of(bytes);
    parts.tiling = tiling;
    parts.model_fingerprint = options_.model_fingerprint;
    INTERNVL_ASSIGN_OR_RETURN(services::Embedder::Result r,
                              embedder_->Embed(services::EmbeddingCacheKey(parts), [&]() -> absl::StatusOr<HostTensor> {
                                INTERNVL_ASSIGN_OR_RETURN(services::TiledImage t,
                                                          services::TileImage(bytes, i, tiling, options_.limits));
                                // Before the encoder: would the prompt fit?
                                INTERNVL_RETURN_IF_ERROR(call.CheckTiles(tiles_so_far + t.tiles.shape[0]));
                                return std::move(t.tiles);
                              }));
    if (r.source == v1::EMBEDDING_SOURCE_CACHE) ++out.cached_images;
    tiles_so_far += r.embeddings->shape[0];
    INTERNVL_RETURN_IF_ERROR(call.CheckTiles(tiles_so_far));
    out.num_patches.push_back(static_cast<int>(r.embeddings->shape[0]));
    INTERNVL_RETURN_IF_ERROR(Append(*r.embeddings, &out));
  }
  out.vision_ms = MsSince(t0);  // decode + tiling + encode, interleaved per image
  return out;
}

absl::StatusOr<MediaEmbeddings> EmbeddedStages::EncodeVideo(const std::string& video, const v1::VideoSettings& settings,
                                                            const CallState& call) {
#ifdef INTERNVL_HAVE_VIDEO
  MediaEmbeddings out;
  if (static_cast<int64_t>(video.size()) > options_.max_video_bytes)
    return absl::ResourceExhaustedError(
        absl::StrCat("the video is ", video.size(), " bytes, over the limit of ", options_.max_video_bytes));
  video::VideoOptions vo;
  vo.num_segments = settings.num_segments() > 0 ? settings.num_segments() : video::kDefaultNumSegments;
  vo.max_num = settings.max_num() > 0 ? settings.max_num() : 1;
  vo.image_size = options_.limits.image_size;
  vo.limits.max_bytes = options_.max_video_bytes;
  const auto t0 = Clock::now();
  absl::StatusOr<video::VideoFrames> frames = video::LoadVideoFrames(video, vo);
  if (!frames.ok()) return Annotate(frames.status(), "video");
  out.preprocess_ms = MsSince(t0);
  out.frame_indices.assign(frames->frame_indices.begin(), frames->frame_indices.end());
  out.num_patches = frames->num_patches_list;
  v1::TilingSettings ts;
  ts.set_max_num(vo.max_num);
  ts.set_use_thumbnail(false);
  services::EmbeddingKeyParts parts;
  parts.media_sha256 = services::Sha256Of(video);
  INTERNVL_ASSIGN_OR_RETURN(parts.tiling, services::ResolveTiling(ts, options_.limits));
  parts.num_segments = vo.num_segments;
  parts.model_fingerprint = options_.model_fingerprint;
  const preprocess::Tiles& tiles = frames->tiles;
  INTERNVL_RETURN_IF_ERROR(call.CheckTiles(tiles.count));
  const auto t1 = Clock::now();
  INTERNVL_ASSIGN_OR_RETURN(services::Embedder::Result r,
                            embedder_->Embed(services::EmbeddingCacheKey(parts), [&]() -> absl::StatusOr<HostTensor> {
                              HostTensor t(DType::kU8, {tiles.count, tiles.size, tiles.size, preprocess::kRgbChannels});
                              std::copy_n(tiles.data.begin(), t.bytes.size(), t.bytes.begin());
                              return t;
                            }));
  out.vision_ms = MsSince(t1);
  if (r.source == v1::EMBEDDING_SOURCE_CACHE) out.cached_images = 1;
  INTERNVL_RETURN_IF_ERROR(Append(*r.embeddings, &out));
  return out;
#else
  return absl::UnimplementedError("this build has no video support");
#endif
}

absl::StatusOr<GenerateOutcome> EmbeddedStages::Generate(const GenerateInput& input, const TokenSink& sink,
                                                         const CallState& call) {
  const auto& stops = prompt_->stop_ids();
  EngineRequest request;
  request.request_id = input.request_id;
  request.prompt_ids.assign(input.prompt_ids.begin(), input.prompt_ids.end());
  if (input.embeddings != nullptr) request.image_embeddings = *input.embeddings;
  request.img_context_id = prompt_->img_context_id();
  request.stop_ids = stops;
  request.settings = input.settings;
  request.deadline = call.deadline;
  request.scm_high_tokens = input.scm_high_tokens;
  // On the engine's step thread, while this worker waits below.
  request.on_token = [&](int id) {
    if (std::find(stops.begin(), stops.end(), id) != stops.end()) return true;
    return sink({id});
  };
  INTERNVL_ASSIGN_OR_RETURN(std::shared_ptr<GenerationHandle> handle, engine_->Submit(std::move(request)));
  if (call.cancellation != nullptr) call.cancellation->SetCancelHook([handle] { handle->Cancel(); });
  absl::StatusOr<EngineResult> g = handle->Wait();
  if (call.cancellation != nullptr) call.cancellation->SetCancelHook(nullptr);
  if (!g.ok()) return g.status();
  GenerateOutcome out;
  out.token_ids = g->token_ids;
  if (g->finish_reason == FinishReason::kStop && !out.token_ids.empty() &&
      std::find(stops.begin(), stops.end(), out.token_ids.back()) != stops.end()) {
    out.stop_token_id = out.token_ids.back();
    out.token_ids.pop_back();
  }
  out.finish_reason = g->finish_reason;
  out.cached_prompt_tokens = g->cached_prompt_tokens;
  out.queue_ms = g->queue_ms;
  out.prefill_ms = g->prefill_ms;
  out.decode_ms = g->decode_ms;
  out.scm = g->scm;
  out.prompt_tokens = g->prompt_tokens;
  if (out.finish_reason == FinishReason::kCancelled) return absl::CancelledError("the client cancelled");
  return out;
}

}  // namespace internvl::gateway
