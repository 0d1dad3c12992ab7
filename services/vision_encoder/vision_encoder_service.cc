#include "services/vision_encoder/vision_encoder_service.h"

#include <chrono>
#include <optional>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "services/common/reactors.h"
#include "services/common/sha256.h"
#include "services/vision_encoder/embedding_cache.h"
#include "services/vision_encoder/vision_model_encoder.h"

namespace internvl::services {
namespace {

constexpr char kService[] = "vision_encoder";

int MaxTilesPerCall(const ImageLimits& limits) { return limits.max_tiles + 1; }  // + thumbnail

uint64_t MaxTileBytes(const ImageLimits& limits) {
  return static_cast<uint64_t>(MaxTilesPerCall(limits)) * limits.image_size * limits.image_size * 3;
}

}  // namespace

// Reads the tile tensor of one Encode call, then embeds it on the queue.
class VisionEncoderService::EncodeReactor final
    : public ReadAllThenReplyReactor<v1::EncodeRequest, v1::EncodeResponse> {
 public:
  EncodeReactor(grpc::CallbackServerContext* context, VisionEncoderService* service)
      : ReadAllThenReplyReactor(context, &service->rpc_metrics_, "Encode"),
        service_(service),
        assembler_(MaxTileBytes(service->options_.limits)) {
    if (absl::Status slot = service->slots_.Acquire(); !slot.ok()) {
      Fail(slot);
      return;
    }
    holds_slot_ = true;
    StartReading();
  }
  ~EncodeReactor() override {
    if (holds_slot_) service_->slots_.Release();
  }

 private:
  absl::Status OnMessage(const v1::EncodeRequest& request) override {
    if (request.has_header()) {
      if (messages_ > 0) return absl::InvalidArgumentError("EncodeHeader is only allowed on the first message");
      header_ = request.header();
    }
    ++messages_;
    if (!request.has_tiles()) return absl::OkStatus();
    if (tiles_.has_value()) return absl::InvalidArgumentError("an Encode call carries exactly one tile tensor");
    INTERNVL_RETURN_IF_ERROR(Annotate(assembler_.Add(request.tiles()), "tiles"));
    if (assembler_.complete()) tiles_ = assembler_.Take();
    return absl::OkStatus();
  }

  void OnAllReceived() override {
    if (!tiles_.has_value()) {
      Fail(absl::InvalidArgumentError(assembler_.started() ? "the tile tensor ended before its declared size"
                                                           : "the request has no tiles"));
      return;
    }
    const ImageLimits& limits = service_->options_.limits;
    if (absl::Status valid = ValidateTiles(*tiles_, limits.image_size, MaxTilesPerCall(limits)); !valid.ok()) {
      Fail(valid);
      return;
    }
    absl::Status submitted = service_->queue_->Submit([this] { Run(); });
    if (!submitted.ok()) Fail(submitted);
  }

  void Run() {
    if (cancelled()) {
      Fail(absl::CancelledError("client cancelled before encoding started"));
      return;
    }
    absl::StatusOr<std::string> key = service_->KeyForTiles(header_, *tiles_);
    if (!key.ok()) {
      Fail(key.status());
      return;
    }
    v1::EmbeddingInfo info;
    info.set_num_patches(static_cast<int>(tiles_->shape[0]));
    std::vector<v1::EncodeResponse> out;
    const HostTensor* tiles = &*tiles_;
    absl::Status status = service_->AppendEmbedding(
        *key, [tiles] { return *tiles; }, info, &out);
    if (!status.ok()) {
      Fail(status);
      return;
    }
    Reply(std::move(out));
  }

  VisionEncoderService* service_;
  TensorAssembler assembler_;
  v1::EncodeHeader header_;
  int messages_ = 0;
  std::optional<HostTensor> tiles_;
  bool holds_slot_ = false;
};

VisionEncoderService::VisionEncoderService(const VisionEncoderServiceOptions& options, Embedder* embedder,
                                           MetricsRegistry* registry)
    : options_(options),
      embedder_(embedder),
      rpc_metrics_(registry, kService),
      queue_(std::make_unique<WorkQueue>(
          options.threads, options.max_queued,
          registry->GetGauge("internvl_queue_depth", "Requests waiting for a worker", {{"service", kService}}),
          registry->GetGauge("internvl_busy_workers", "Workers running a request", {{"service", kService}}))),
      slots_(options.max_concurrent_streams, "--max_concurrent_streams") {}

VisionEncoderService::~VisionEncoderService() = default;

absl::StatusOr<std::string> VisionEncoderService::KeyForTiles(const v1::EncodeHeader& header,
                                                              const HostTensor& tiles) const {
  if (header.bypass_cache()) return std::string();
  EmbeddingKeyParts parts;
  if (!header.media_sha256().empty() && header.media_sha256().size() != parts.media_sha256.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("media_sha256 must be 32 bytes, got ", header.media_sha256().size()));
  }
  // The key comes from the bytes this server received, never from the
  // client's media_sha256: a caller could otherwise store its own
  // embeddings under the digest of someone else's image (cache poisoning).
  parts.media_sha256 = Sha256().UpdateField("tiles").Update(tiles.bytes.data(), tiles.bytes.size()).Final();
  // The same defaults as tiling itself, so "0" and "12" share entries.
  INTERNVL_ASSIGN_OR_RETURN(parts.tiling, ResolveTiling(header.tiling(), options_.limits));
  if (header.num_segments() < 0) return absl::InvalidArgumentError("num_segments must be >= 0");
  parts.num_segments = header.num_segments();
  parts.model_fingerprint = options_.model_fingerprint;
  return EmbeddingCacheKey(parts);
}

absl::Status VisionEncoderService::AppendEmbedding(const std::string& key, const TileSource& tiles,
                                                   v1::EmbeddingInfo info, std::vector<v1::EncodeResponse>* out) {
  const auto start = std::chrono::steady_clock::now();
  INTERNVL_ASSIGN_OR_RETURN(Embedder::Result result, embedder_->Embed(key, tiles));
  INTERNVL_ASSIGN_OR_RETURN(std::vector<v1::TensorChunk> chunks,
                            ChunkTensor(*result.embeddings, options_.max_chunk_bytes));
  info.set_source(result.source);
  info.set_num_patches(result.embeddings->shape.empty() ? 0 : static_cast<int>(result.embeddings->shape[0]));
  info.set_tokens_per_tile(options_.tokens_per_tile);
  info.set_cache_key(key);
  info.set_model_fingerprint(options_.model_fingerprint);
  info.set_elapsed_ms(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  for (size_t c = 0; c < chunks.size(); ++c) {
    v1::EncodeResponse& response = out->emplace_back();
    if (c == 0) *response.mutable_info() = info;
    *response.mutable_embeddings() = std::move(chunks[c]);
  }
  return absl::OkStatus();
}

grpc::ServerBidiReactor<v1::EncodeRequest, v1::EncodeResponse>* VisionEncoderService::Encode(
    grpc::CallbackServerContext* context) {
  using Reactor = grpc::ServerBidiReactor<v1::EncodeRequest, v1::EncodeResponse>;
  if (Reactor* refused = RefuseIfDraining<Reactor>(&rpc_metrics_, "Encode")) return refused;
  return new EncodeReactor(context, this);
}

grpc::ServerWriteReactor<v1::EncodeResponse>* VisionEncoderService::EncodeImages(
    grpc::CallbackServerContext* context, const v1::PreprocessImagesRequest* request) {
  using Reactor = grpc::ServerWriteReactor<v1::EncodeResponse>;
  if (Reactor* refused = RefuseIfDraining<Reactor>(&rpc_metrics_, "EncodeImages")) return refused;
  auto* reactor = new WriteReactor<v1::EncodeResponse>(context, &rpc_metrics_, "EncodeImages");
  absl::Status valid = ValidateImages(*request, options_.limits);
  absl::StatusOr<preprocess::TilingOptions> tiling = ResolveTiling(request->tiling(), options_.limits);
  if (!valid.ok() || !tiling.ok()) {
    reactor->Fail(!valid.ok() ? valid : tiling.status());
    return reactor;
  }
  absl::Status submitted = queue_->Submit([this, reactor, request, tiling = *tiling] {
    if (reactor->cancelled()) {
      reactor->Fail(absl::CancelledError("client cancelled before encoding started"));
      return;
    }
    std::vector<v1::EncodeResponse> out;
    for (int i = 0; i < request->images_size(); ++i) {
      const std::string& bytes = request->images(i);
      EmbeddingKeyParts parts;
      parts.media_sha256 = Sha256Of(bytes);
      parts.tiling = tiling;
      parts.model_fingerprint = options_.model_fingerprint;
      const std::string key = EmbeddingCacheKey(parts);
      // Filled only when this call decodes the image (a miss).
      v1::ImageTiles decoded;
      TileSource source = [&]() -> absl::StatusOr<HostTensor> {
        INTERNVL_ASSIGN_OR_RETURN(TiledImage image, TileImage(bytes, i, tiling, options_.limits));
        decoded = image.info;
        return std::move(image.tiles);
      };
      v1::EmbeddingInfo info;
      info.set_image_index(i);
      const size_t first = out.size();
      absl::Status status = AppendEmbedding(key, source, info, &out);
      if (!status.ok()) {
        reactor->Fail(status);
        return;
      }
      v1::ImageTiles* tiles = out[first].mutable_info()->mutable_tiles();
      if (decoded.num_patches() > 0) {
        *tiles = decoded;
      } else {
        tiles->set_image_index(i);
        tiles->set_num_patches(out[first].info().num_patches());
        tiles->set_tile_size(options_.limits.image_size);
        tiles->set_media_sha256(parts.media_sha256.data(), parts.media_sha256.size());
      }
    }
    reactor->Reply(std::move(out));
  });
  if (!submitted.ok()) reactor->Fail(submitted);
  return reactor;
}

}  // namespace internvl::services
