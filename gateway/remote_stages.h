// ChatStages over gRPC: Preprocess.PreprocessImages / PreprocessVideo, then
// VisionEncoder.Encode (keyed by the media SHA-256 so the shared cache hits),
// then LlmDecoder.Generate (bidirectional stream). Every stage call gets the
// request's deadline capped by --deadline-ms, is retried on UNAVAILABLE (a
// replica restarting, a connection refused) up to `retries` times with
// exponential backoff and jitter (each delay drawn in [d/2, d]), and is cancelled (ClientContext::TryCancel) the moment
// the gateway's own client goes away, so the decoder stops generating. A
// Generate call is only retried before its first token.
#pragma once

#include <memory>
#include <string>

#include "gateway/stages.h"
#include "internvl/v1/llm_decoder.grpc.pb.h"
#include "internvl/v1/preprocess.grpc.pb.h"
#include "internvl/v1/vision_encoder.grpc.pb.h"
#include "services/common/security.h"

namespace internvl::gateway {

struct RemoteStagesOptions {
  std::string preprocess_addr;
  std::string vision_addr;
  std::string decoder_addr;
  absl::Duration stage_deadline = absl::Seconds(300);  // per stage call
  int retries = 2;                                     // extra attempts on UNAVAILABLE
  absl::Duration backoff = absl::Milliseconds(100);    // first retry delay (jittered), doubled after
  size_t max_chunk_bytes = size_t{1} << 20;
  // Tiles one VisionEncoder.Encode call takes (the encoder's --max_tiles + 1):
  // a video's frames are split over calls of at most this many.
  int max_tiles_per_encode = 41;
  // TLS to the stage services (mTLS when a client certificate is given).
  services::ClientTlsOptions tls;
};

class RemoteStages : public ChatStages {
 public:
  // INVALID_ARGUMENT / NOT_FOUND for unusable TLS files.
  static absl::StatusOr<std::unique_ptr<RemoteStages>> Create(const RemoteStagesOptions& options);

  absl::StatusOr<MediaEmbeddings> EncodeImages(const v1::PreprocessImagesRequest& request,
                                               const CallState& call) override;
  absl::StatusOr<MediaEmbeddings> EncodeVideo(const std::string& video, const v1::VideoSettings& settings,
                                              const CallState& call) override;
  absl::StatusOr<GenerateOutcome> Generate(const GenerateInput& input, const TokenSink& sink,
                                           const CallState& call) override;

 private:
  RemoteStages(const RemoteStagesOptions& options, const std::shared_ptr<grpc::ChannelCredentials>& credentials);
  // Encodes the tiles of each reply (images in order) and concatenates.
  absl::Status EncodeTiles(const v1::EncodeHeader& header, const HostTensor& tiles, const CallState& call,
                           MediaEmbeddings* out);

  RemoteStagesOptions options_;
  std::unique_ptr<v1::Preprocess::Stub> preprocess_;
  std::unique_ptr<v1::VisionEncoder::Stub> vision_;
  std::unique_ptr<v1::LlmDecoder::Stub> decoder_;
};

}  // namespace internvl::gateway
