#include "gateway/client.h"

#include <algorithm>
#include <optional>

#include "grpcpp/create_channel.h"
#include "services/common/generation.h"
#include "services/common/status_map.h"
#include "services/preprocess/image_tiles.h"

namespace internvl::gateway {

constexpr size_t kVideoSliceBytes = size_t{1} << 20;

v1::ChatRequest ToProtoRequest(const ChatRequest& r) {
  v1::ChatRequest p;
  p.set_text(r.question);
  for (const auto& [q, a] : r.history) {
    v1::Turn* t = p.add_history();
    t->set_question(q);
    t->set_answer(a);
  }
  for (const auto& image : r.images) p.add_images(image);
  p.set_max_num(r.max_num);
  if (r.system_message) p.set_system_message(*r.system_message);
  *p.mutable_generation() = services::ToProto(r.generation);
  if (r.minimonkey) *p.mutable_minimonkey() = services::MiniMonkeyToProto(*r.minimonkey);
  p.set_scm(r.scm);
  return p;
}

ChatResult FromProtoFinal(const v1::ChatFinal& f) {
  ChatResult r;
  r.response = f.response();
  r.token_ids.assign(f.token_ids().begin(), f.token_ids().end());
  if (f.has_stop_token_id()) r.token_ids.push_back(f.stop_token_id());
  r.finish_reason = services::FromProto(f.finish_reason());
  r.prompt_tokens = f.prompt_tokens();
  r.num_patches_list.assign(f.num_patches().begin(), f.num_patches().end());
  for (int n : r.num_patches_list) r.num_tiles += n;
  r.frame_indices.assign(f.frame_indices().begin(), f.frame_indices().end());
  r.timings.preprocess_ms = f.timings().preprocess_ms();
  r.timings.vision_ms = f.timings().vision_ms();
  r.cached_prompt_tokens = f.cached_prompt_tokens();
  if (f.has_scm()) r.scm = services::FromProto(f.scm());
  r.timings.queue_ms = f.timings().queue_ms();
  r.timings.prefill_ms = f.timings().prefill_ms();
  r.timings.decode_ms = f.timings().decode_ms();
  r.timings.time_to_first_token_ms = f.timings().time_to_first_token_ms();
  r.timings.total_ms = f.timings().total_ms();
  return r;
}

ChatClient::ChatClient(const std::string& address)
    : ChatClient(address, grpc::InsecureChannelCredentials(), ClientSecurity()) {}

ChatClient::ChatClient(const std::string& address, const std::shared_ptr<grpc::ChannelCredentials>& credentials,
                       const ClientSecurity& security)
    : token_(security.token) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetMaxSendMessageSize(64 << 20);
  services::AddTlsChannelArgs(security.tls, &args);
  stub_ = v1::InternVL::NewStub(grpc::CreateCustomChannel(address, credentials, args));
}

absl::StatusOr<std::unique_ptr<ChatClient>> ChatClient::Create(const std::string& address,
                                                               const ClientSecurity& security) {
  auto credentials = services::MakeChannelCredentials(security.tls);
  if (!credentials.ok()) return credentials.status();
  return std::unique_ptr<ChatClient>(new ChatClient(address, *credentials, security));
}

absl::StatusOr<ChatResult> ChatClient::Chat(const ChatRequest& request,
                                            const std::function<bool(absl::string_view)>& on_text,
                                            absl::Duration timeout) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  services::AddBearerToken(token_, &ctx);
  v1::ChatRequest proto = ToProtoRequest(request);
  std::optional<v1::ChatFinal> final;
  bool stopped = false;
  auto handle = [&](const v1::ChatResponse& r) {
    if (!r.delta().empty() && on_text && !stopped && !on_text(r.delta())) {
      stopped = true;
      ctx.TryCancel();
    }
    if (r.has_final()) final = r.final();
  };
  grpc::Status status;
  if (request.video) {
    auto stream = stub_->ChatVideo(&ctx);
    v1::ChatVideoRequest first;
    *first.mutable_request() = proto;
    first.mutable_video()->set_num_segments(request.num_segments);
    first.mutable_video()->set_max_num(request.video_max_num);
    const std::string& video = *request.video;
    size_t offset = std::min(video.size(), kVideoSliceBytes);
    first.set_video_data(video.substr(0, offset));
    bool ok = stream->Write(first);
    while (ok && offset < video.size()) {
      v1::ChatVideoRequest next;
      const size_t n = std::min(video.size() - offset, kVideoSliceBytes);
      next.set_video_data(video.substr(offset, n));
      offset += n;
      ok = stream->Write(next);
    }
    stream->WritesDone();
    v1::ChatResponse r;
    while (stream->Read(&r)) handle(r);
    status = stream->Finish();
  } else {
    auto stream = stub_->Chat(&ctx, proto);
    v1::ChatResponse r;
    while (stream->Read(&r)) handle(r);
    status = stream->Finish();
  }
  if (!status.ok()) return services::FromGrpcStatus(status);
  if (!final) return absl::InternalError("the gateway ended the stream without a final message");
  return FromProtoFinal(*final);
}

}  // namespace internvl::gateway
