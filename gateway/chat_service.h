// The public InternVL API (gateway.proto) over ChatStages: validates the
// request, gets image / video embeddings from the stages, renders and
// tokenises the prompt exactly as chat() does (PromptBuilder), streams the
// decoder's tokens back as UTF-8-safe text deltas, and ends with ChatFinal.
// gRPC threads only validate and queue; a worker of the service's WorkQueue
// runs the (blocking) stage calls. A client that cancels cancels the stage
// call in flight (the decoder stops generating).
#pragma once

#include <cstdint>
#include <memory>

#include "absl/time/time.h"
#include "core/chat/prompt_builder.h"
#include "gateway/stages.h"
#include "internvl/v1/gateway.grpc.pb.h"
#include "services/common/metrics.h"
#include "services/common/security.h"
#include "services/common/stream_slots.h"
#include "services/common/work_queue.h"

namespace internvl::gateway {

struct ChatServiceOptions {
  int max_images = 16;                          // images per request (RESOURCE_EXHAUSTED above)
  int64_t max_image_bytes = int64_t{32} << 20;  // encoded bytes per image
  int64_t max_video_bytes = int64_t{256} << 20;
  int max_segments = 64;  // video frames per request
  int max_tiles = 40;     // largest max_num
  int max_new_tokens_limit = 4096;
  // Text + image tokens of the rendered prompt. Estimated before the vision
  // encoder runs (text tokens + tiles x tokens per tile), so an oversized
  // request costs a tokenisation, not a vision forward.
  int max_prompt_tokens = 32768;
  int64_t max_text_bytes = int64_t{1} << 20;  // question + history
  // ChatVideo calls open at once (each buffers its upload, up to
  // max_video_bytes): past it RESOURCE_EXHAUSTED at the call's start.
  int max_concurrent_uploads = 16;
  // Bearer tokens the calls must carry (none: open). Health and reflection
  // stay open for probes.
  services::BearerAuth auth;
  int threads = 40;  // concurrent requests in flight through the stages (the decoder's 32 + 8)
  int max_queued = 64;
  // Used when the client sets no deadline.
  absl::Duration default_deadline = absl::Seconds(600);
  // Serve the model as MiniMonkey (two-scale tiling, SCM on request) even
  // when its config does not name MiniMonkey.
  bool minimonkey = false;
};

class ChatService : public v1::InternVL::CallbackService {
 public:
  // `prompt` and `stages` must outlive the service.
  ChatService(const ChatServiceOptions& options, const PromptBuilder* prompt, ChatStages* stages,
              services::MetricsRegistry* registry);
  ~ChatService() override;

  grpc::ServerWriteReactor<v1::ChatResponse>* Chat(grpc::CallbackServerContext* context,
                                                   const v1::ChatRequest* request) override;
  grpc::ServerBidiReactor<v1::ChatVideoRequest, v1::ChatResponse>* ChatVideo(
      grpc::CallbackServerContext* context) override;
  grpc::ServerUnaryReactor* ChatUnary(grpc::CallbackServerContext* context, const v1::ChatRequest* request,
                                      v1::ChatResponse* response) override;

  // One request end to end (worker thread). `video` is null for image chat.
  // `emit` gets every ChatResponse (deltas, then the final one); returns
  // false when the client is gone.
  absl::Status Run(const v1::ChatRequest& request, const std::string* video, const v1::VideoSettings& video_settings,
                   const CallState& call, const std::function<bool(v1::ChatResponse)>& emit);

  const ChatServiceOptions& options() const { return options_; }
  services::WorkQueue* queue() { return queue_.get(); }
  services::RpcMetrics* metrics() { return &metrics_; }
  services::StreamSlots* upload_slots() { return &upload_slots_; }

 private:
  const ChatServiceOptions options_;
  const PromptBuilder* const prompt_;
  ChatStages* const stages_;
  services::RpcMetrics metrics_;
  services::Counter* tokens_;
  services::Histogram* ttft_;
  std::unique_ptr<services::WorkQueue> queue_;
  services::StreamSlots upload_slots_;
};

}  // namespace internvl::gateway
