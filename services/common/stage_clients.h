// Blocking client calls to the internal stages, reassembling streamed tensors:
// for the gateway's remote stage clients, tests and benchmarks. Each call
// takes the caller's ClientContext (deadline, cancellation) and returns the
// RPC's status mapped to absl::Status (UNAVAILABLE for an unreachable stage,
// DEADLINE_EXCEEDED past the deadline).
#pragma once

#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "core/host_tensor.h"
#include "grpcpp/client_context.h"
#include "internvl/v1/preprocess.grpc.pb.h"
#include "internvl/v1/vision_encoder.grpc.pb.h"
#include "services/common/tensor_chunks.h"

namespace internvl::services {

struct TiledImageReply {
  v1::ImageTiles info;
  HostTensor tiles;  // uint8 [N, S, S, 3]
};
struct VideoReply {
  v1::VideoInfo video;
  std::vector<TiledImageReply> frames;
};
struct EmbeddingReply {
  v1::EmbeddingInfo info;
  HostTensor embeddings;  // [N, T, H]
};

// Replies larger than `max_tensor_bytes` per tensor are refused
// (RESOURCE_EXHAUSTED) before allocation.
inline constexpr uint64_t kDefaultMaxReplyTensorBytes = uint64_t{1} << 30;

absl::StatusOr<std::vector<TiledImageReply>> CallPreprocessImages(
    v1::Preprocess::StubInterface* stub, grpc::ClientContext* context, const v1::PreprocessImagesRequest& request,
    uint64_t max_tensor_bytes = kDefaultMaxReplyTensorBytes);

// Uploads `video` in slices of `slice_bytes`.
absl::StatusOr<VideoReply> CallPreprocessVideo(v1::Preprocess::StubInterface* stub, grpc::ClientContext* context,
                                               const v1::VideoSettings& settings, absl::string_view video,
                                               size_t slice_bytes = kDefaultMaxChunkBytes,
                                               uint64_t max_tensor_bytes = kDefaultMaxReplyTensorBytes);

// Streams `tiles` in chunks of `chunk_bytes` with `header` on the first.
absl::StatusOr<EmbeddingReply> CallEncode(v1::VisionEncoder::StubInterface* stub, grpc::ClientContext* context,
                                          const v1::EncodeHeader& header, const HostTensor& tiles,
                                          size_t chunk_bytes = kDefaultMaxChunkBytes,
                                          uint64_t max_tensor_bytes = kDefaultMaxReplyTensorBytes);

absl::StatusOr<std::vector<EmbeddingReply>> CallEncodeImages(v1::VisionEncoder::StubInterface* stub,
                                                             grpc::ClientContext* context,
                                                             const v1::PreprocessImagesRequest& request,
                                                             uint64_t max_tensor_bytes = kDefaultMaxReplyTensorBytes);

}  // namespace internvl::services
