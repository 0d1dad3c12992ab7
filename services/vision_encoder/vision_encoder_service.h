// internvl.v1.VisionEncoder: Encode (tiles in, embeddings out) and
// EncodeImages (images in, preprocessing in-process). Handlers read and
// validate on gRPC threads; cache lookups, decoding and the model run on the
// service's WorkQueue through the Embedder.
#pragma once

#include <memory>
#include <string>

#include "internvl/v1/vision_encoder.grpc.pb.h"
#include "services/common/metrics.h"
#include "services/common/stream_slots.h"
#include "services/common/work_queue.h"
#include "services/preprocess/image_tiles.h"
#include "services/vision_encoder/embedder.h"

namespace internvl::services {

struct VisionEncoderServiceOptions {
  // EncodeImages' limits; limits.max_tiles also bounds Encode (max_tiles
  // grid tiles + 1 thumbnail per call). limits.image_size must be the
  // model's tile side.
  ImageLimits limits;
  size_t max_chunk_bytes = kDefaultMaxChunkBytes;
  int threads = 1;
  int max_queued = 64;
  // Part of every cache key: the vision weights + compute dtype.
  std::string model_fingerprint;
  // Image tokens per tile (EmbeddingInfo.tokens_per_tile).
  int tokens_per_tile = 256;
  // Encode calls open at once (each buffers up to max_tiles + 1 tiles).
  int max_concurrent_streams = 256;
};

class VisionEncoderService final : public v1::VisionEncoder::CallbackService {
 public:
  // `embedder` must outlive the service.
  VisionEncoderService(const VisionEncoderServiceOptions& options, Embedder* embedder, MetricsRegistry* registry);
  ~VisionEncoderService() override;

  grpc::ServerBidiReactor<v1::EncodeRequest, v1::EncodeResponse>* Encode(grpc::CallbackServerContext* context) override;
  grpc::ServerWriteReactor<v1::EncodeResponse>* EncodeImages(grpc::CallbackServerContext* context,
                                                             const v1::PreprocessImagesRequest* request) override;

 private:
  class EncodeReactor;
  // The cache key of an Encode call's tiles (empty when bypassed).
  absl::StatusOr<std::string> KeyForTiles(const v1::EncodeHeader& header, const HostTensor& tiles) const;
  // Embeds one item and appends its reply messages (info + chunks) to `out`.
  absl::Status AppendEmbedding(const std::string& key, const TileSource& tiles, v1::EmbeddingInfo info,
                               std::vector<v1::EncodeResponse>* out);

  const VisionEncoderServiceOptions options_;
  Embedder* embedder_;
  RpcMetrics rpc_metrics_;
  std::unique_ptr<WorkQueue> queue_;
  StreamSlots slots_;
};

}  // namespace internvl::services
