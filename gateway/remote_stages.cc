#include "gateway/remote_stages.h"

#include <algorithm>
#include <chrono>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "grpcpp/create_channel.h"
#include "services/common/generation.h"
#include "services/common/stage_clients.h"
#include "services/common/status_map.h"
#include "services/common/tensor_chunks.h"

namespace internvl::gateway {

using services::FromGrpcStatus;
using Clock = std::chrono::steady_clock;

namespace {

double MsSince(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

std::shared_ptr<grpc::Channel> Channel(const std::string& addr,
                                       const std::shared_ptr<grpc::ChannelCredentials>& credentials,
                                       const services::ClientTlsOptions& tls) {
  grpc::ChannelArguments args;
  services::AddTlsChannelArgs(tls, &args);
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetMaxSendMessageSize(64 << 20);
  // A restarted stage is found again within a second, not after the default
  // exponential reconnect backoff (up to 120 s).
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 200);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 200);
  return grpc::CreateCustomChannel(addr, credentials, args);
}

absl::Status Named(const absl::Status& s, const std::string& stage, const std::string& addr) {
  if (s.ok()) return s;
  return absl::Status(s.code(), absl::StrCat(stage, " (", addr, "): ", s.message()));
}

// A delay in [d / 2, d]: clients that failed together (a replica restarting
// under load) do not all come back at the same instant.
absl::Duration Jittered(absl::Duration d) {
  thread_local std::mt19937_64 rng(std::random_device{}());
  return d / 2 + d / 2 * std::uniform_real_distribution<double>(0.0, 1.0)(rng);
}

// Runs `fn(ClientContext*)` with the stage deadline and the client's
// cancellation wired in, retrying UNAVAILABLE. `retryable()` says whether a
// failed attempt may be repeated (Generate: only before its first token).
template <typename Fn, typename Retryable>
auto CallWithRetries(const RemoteStagesOptions& o, const CallState& call, const std::string& stage,
                     const std::string& addr, Fn fn, Retryable retryable) -> decltype(fn(nullptr)) {
  absl::Duration backoff = o.backoff;
  for (int attempt = 0;; ++attempt) {
    if (call.cancellation && call.cancellation->cancelled()) return absl::CancelledError("the client cancelled");
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(std::min(call.deadline, absl::Now() + o.stage_deadline)));
    if (call.cancellation) call.cancellation->SetCancelHook([&ctx] { ctx.TryCancel(); });
    auto result = fn(&ctx);
    if (call.cancellation) call.cancellation->SetCancelHook(nullptr);
    absl::Status status;
    if constexpr (std::is_same_v<decltype(result), absl::Status>) {
      status = result;
    } else {
      status = result.status();
    }
    if (status.ok()) return result;
    const bool again = status.code() == absl::StatusCode::kUnavailable && attempt < o.retries && retryable() &&
                       absl::Now() + backoff < call.deadline && !(call.cancellation && call.cancellation->cancelled());
    if (!again) return Named(status, stage, addr);
    absl::SleepFor(Jittered(backoff));
    backoff *= 2;
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<RemoteStages>> RemoteStages::Create(const RemoteStagesOptions& options) {
  INTERNVL_ASSIGN_OR_RETURN(auto credentials, services::MakeChannelCredentials(options.tls));
  return std::unique_ptr<RemoteStages>(new RemoteStages(options, credentials));
}

RemoteStages::RemoteStages(const RemoteStagesOptions& options,
                           const std::shared_ptr<grpc::ChannelCredentials>& credentials)
    : options_(options),
      preprocess_(v1::Preprocess::NewStub(Channel(options.preprocess_addr, credentials, options.tls))),
      vision_(v1::VisionEncoder::NewStub(Channel(options.vision_addr, credentials, options.tls))),
      decoder_(v1::LlmDecoder::NewStub(Channel(options.decoder_addr, credentials, options.tls))) {}

absl::Status RemoteStages::EncodeTiles(const v1::EncodeHeader& header, const HostTensor& tiles, const CallState& call,
                                       MediaEmbeddings* out) {
  const auto t0 = Clock::now();
  auto reply = CallWithRetries(
      options_, call, "vision encoder", options_.vision_addr,
      [&](grpc::ClientContext* ctx) {
        return services::CallEncode(vision_.get(), ctx, header, tiles, options_.max_chunk_bytes);
      },
      [] { return true; });
  out->vision_ms += MsSince(t0);
  if (!reply.ok()) return reply.status();
  if (reply->info.source() == v1::EMBEDDING_SOURCE_CACHE) ++out->cached_images;
  const HostTensor& e = reply->embeddings;
  if (out->embeddings.shape.empty()) {
    out->embeddings = HostTensor(e.dtype, {0, e.shape.empty() ? 0 : e.shape.back()});
  }
  if (e.dtype != out->embeddings.dtype || e.shape.empty() || e.shape.back() != out->embeddings.shape[1])
    return absl::InternalError("vision encoder replies disagree on dtype or hidden size");
  out->embeddings.bytes.insert(out->embeddings.bytes.end(), e.bytes.begin(), e.bytes.end());
  out->embeddings.shape[0] += e.numel() / e.shape.back();
  return absl::OkStatus();
}

absl::StatusOr<MediaEmbeddings> RemoteStages::EncodeImages(const v1::PreprocessImagesRequest& request,
                                                           const CallState& call) {
  MediaEmbeddings out;
  const auto t0 = Clock::now();
  INTERNVL_ASSIGN_OR_RETURN(
      std::vector<services::TiledImageReply> images,
      CallWithRetries(
          options_, call, "preprocess", options_.preprocess_addr,
          [&](grpc::ClientContext* ctx) { return services::CallPreprocessImages(preprocess_.get(), ctx, request); },
          [] { return true; }));
  out.preprocess_ms = MsSince(t0);
  int64_t tiles = 0;
  for (const auto& image : images) tiles += image.info.num_patches();
  INTERNVL_RETURN_IF_ERROR(call.CheckTiles(tiles));
  for (const auto& image : images) {
    v1::EncodeHeader header;
    header.set_media_sha256(image.info.media_sha256());
    *header.mutable_tiling() = request.tiling();
    INTERNVL_RETURN_IF_ERROR(EncodeTiles(header, image.tiles, call, &out));
    out.num_patches.push_back(image.info.num_patches());
  }
  return out;
}

absl::StatusOr<MediaEmbeddings> RemoteStages::EncodeVideo(const std::string& video, const v1::VideoSettings& settings,
                                                          const CallState& call) {
  MediaEmbeddings out;
  const auto t0 = Clock::now();
  INTERNVL_ASSIGN_OR_RETURN(services::VideoReply reply, CallWithRetries(
                                                            options_, call, "preprocess", options_.preprocess_addr,
                                                            [&](grpc::ClientContext* ctx) {
                                                              return services::CallPreprocessVideo(
                                                                  preprocess_.get(), ctx, settings, video,
                                                                  options_.max_chunk_bytes);
                                                            },
                                                            [] { return true; }));
  out.preprocess_ms = MsSince(t0);
  out.frame_indices.assign(reply.video.frame_indices().begin(), reply.video.frame_indices().end());
  if (reply.frames.empty()) return absl::InvalidArgumentError("the video gave no frames");
  int64_t total = 0;
  for (const auto& f : reply.frames) total += f.info.num_patches();
  INTERNVL_RETURN_IF_ERROR(call.CheckTiles(total));
  v1::EncodeHeader header;
  header.set_media_sha256(reply.frames[0].info.media_sha256());
  header.mutable_tiling()->set_max_num(settings.max_num() > 0 ? settings.max_num() : 1);
  header.mutable_tiling()->set_use_thumbnail(false);
  header.set_num_segments(settings.num_segments() > 0 ? settings.num_segments() : 8);
  // Frames in Encode calls of at most max_tiles_per_encode tiles (what one
  // encoder call accepts): 64 segments are as valid as 8.
  const int64_t cap = std::max(1, options_.max_tiles_per_encode);
  for (size_t f0 = 0; f0 < reply.frames.size();) {
    const HostTensor& first = reply.frames[f0].tiles;
    HostTensor tiles(DType::kU8, first.shape);
    tiles.shape[0] = 0;
    tiles.bytes.clear();
    size_t f = f0;
    for (; f < reply.frames.size(); ++f) {
      const HostTensor& t = reply.frames[f].tiles;
      if (tiles.shape[0] > 0 && tiles.shape[0] + t.shape[0] > cap) break;
      tiles.bytes.insert(tiles.bytes.end(), t.bytes.begin(), t.bytes.end());
      tiles.shape[0] += t.shape[0];
      out.num_patches.push_back(reply.frames[f].info.num_patches());
    }
    INTERNVL_RETURN_IF_ERROR(EncodeTiles(header, tiles, call, &out));
    f0 = f;
  }
  // The whole video counts once as cached when every call hit.
  out.cached_images = out.cached_images > 0 ? 1 : 0;
  return out;
}

absl::StatusOr<GenerateOutcome> RemoteStages::Generate(const GenerateInput& input, const TokenSink& sink,
                                                       const CallState& call) {
  bool streamed = false;
  v1::GenerateRequest start;
  v1::GenerateStart* s = start.mutable_start();
  s->set_request_id(input.request_id);
  for (int id : input.prompt_ids) s->add_prompt_token_ids(id);
  *s->mutable_settings() = services::ToProto(input.settings);
  s->set_scm_high_tokens(input.scm_high_tokens);
  std::vector<v1::TensorChunk> chunks;
  if (input.embeddings != nullptr && !input.embeddings->empty()) {
    s->set_image_embedding_rows(input.embeddings->shape[0]);
    INTERNVL_ASSIGN_OR_RETURN(chunks, services::ChunkTensor(*input.embeddings, options_.max_chunk_bytes));
  }
  return CallWithRetries(
      options_, call, "decoder", options_.decoder_addr,
      [&](grpc::ClientContext* ctx) -> absl::StatusOr<GenerateOutcome> {
        auto stream = decoder_->Generate(ctx);
        bool ok = stream->Write(start);
        for (size_t i = 0; ok && i < chunks.size(); ++i) {
          v1::GenerateRequest r;
          *r.mutable_image_embeddings() = chunks[i];
          ok = stream->Write(r);
        }
        if (ok) stream->WritesDone();
        GenerateOutcome out;
        v1::GenerateResponse r;
        bool final_seen = false;
        bool stopped = false;
        while (stream->Read(&r)) {
          if (r.token_ids_size() > 0 && !stopped) {
            streamed = true;
            if (!sink(std::vector<int>(r.token_ids().begin(), r.token_ids().end()))) {
              stopped = true;
              ctx->TryCancel();
            }
          }
          if (r.has_final()) {
            final_seen = true;
            const auto& f = r.final();
            out.token_ids.assign(f.token_ids().begin(), f.token_ids().end());
            if (f.has_stop_token_id()) out.stop_token_id = f.stop_token_id();
            out.finish_reason = services::FromProto(f.finish_reason());
            out.cached_prompt_tokens = f.cached_prompt_tokens();
            out.queue_ms = f.timings().queue_ms();
            out.prefill_ms = f.timings().prefill_ms();
            out.decode_ms = f.timings().decode_ms();
            out.prompt_tokens = f.prompt_tokens();
            if (f.has_scm()) out.scm = services::FromProto(f.scm());
          }
        }
        const grpc::Status status = stream->Finish();
        if (stopped) return absl::CancelledError("the client cancelled");
        if (!status.ok()) return FromGrpcStatus(status);
        if (!final_seen) return absl::InternalError("the decoder ended without a final message");
        return out;
      },
      [&] { return !streamed; });
}

}  // namespace internvl::gateway
