// internvl.v1.Preprocess over core/preprocess and core/video: encoded images
// or a video -> uint8 tiles.
// Handlers validate on the gRPC thread (cheap checks only), then decode and
// tile on the service's WorkQueue; replies are streamed as TensorChunks.
#pragma once

#include <memory>

#include "internvl/v1/preprocess.grpc.pb.h"
#include "services/common/metrics.h"
#include "services/common/work_queue.h"
#include "services/preprocess/image_tiles.h"

namespace internvl::services {

struct PreprocessServiceOptions {
  ImageLimits limits;
  // Data bytes per TensorChunk in replies.
  size_t max_chunk_bytes = kDefaultMaxChunkBytes;
  // Decode/tile workers and the most requests waiting for one.
  int threads = 2;
  int max_queued = 64;
  // PreprocessVideo: upload size and frames per request.
  int64_t max_video_bytes = int64_t{256} << 20;
  int max_segments = 64;
};

class PreprocessService final : public v1::Preprocess::CallbackService {
 public:
  PreprocessService(const PreprocessServiceOptions& options, MetricsRegistry* registry);
  ~PreprocessService() override;

  grpc::ServerWriteReactor<v1::PreprocessImagesResponse>* PreprocessImages(
      grpc::CallbackServerContext* context, const v1::PreprocessImagesRequest* request) override;

  grpc::ServerBidiReactor<v1::PreprocessVideoRequest, v1::PreprocessImagesResponse>* PreprocessVideo(
      grpc::CallbackServerContext* context) override;

 private:
  class VideoReactor;

  const PreprocessServiceOptions options_;
  RpcMetrics rpc_metrics_;
  Counter* images_total_;
  Counter* tiles_total_;
  Histogram* image_seconds_;
  Counter* videos_total_;
  Histogram* video_seconds_;
  std::unique_ptr<WorkQueue> queue_;
};

}  // namespace internvl::services
