#include "gateway/chat_service.h"

#include <algorithm>
#include <chrono>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/preprocess/image.h"
#include "core/preprocess/minimonkey.h"
#include "core/preprocess/tiling.h"
#include "core/status.h"
#include "core/tokenizer/stop_strings.h"
#include "core/tokenizer/streaming_detokenizer.h"
#include "services/common/generation.h"
#include "services/common/log.h"
#include "services/common/reactors.h"
#include "services/common/streaming_reactor.h"
#include "services/preprocess/image_tiles.h"

namespace internvl::gateway {

using Clock = std::chrono::steady_clock;
using services::CallCancellation;

namespace {

double MsSince(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

absl::Time Deadline(grpc::CallbackServerContext* context, absl::Duration fallback) {
  const auto d = context->deadline();
  if (d == std::chrono::system_clock::time_point::max()) return absl::Now() + fallback;
  return std::min(absl::FromChrono(d), absl::Now() + fallback);
}

std::string NewRequestId() {
  std::random_device rd;
  return absl::StrFormat("%08x%08x", rd(), rd());
}

// Chat: server streaming.
class ChatCall : public services::StreamingWriteReactor<v1::ChatResponse> {
 public:
  ChatCall(ChatService* service, grpc::CallbackServerContext* context, const v1::ChatRequest* request)
      : services::StreamingWriteReactor<v1::ChatResponse>(context, service->metrics(), "Chat"),
        service_(service),
        request_(request) {
    if (absl::Status denied = service->options().auth.Check(*context); !denied.ok()) {
      Close(denied);
      return;
    }
    const CallState call{this, Deadline(context, service->options().default_deadline), {}};
    const absl::Status queued = service->queue()->Submit([this, call] {
      const absl::Status s = service_->Run(*request_, nullptr, v1::VideoSettings(), call,
                                           [this](v1::ChatResponse r) { return Write(std::move(r)); });
      Close(s);
    });
    if (!queued.ok()) Close(queued);
  }

 private:
  ChatService* const service_;
  const v1::ChatRequest* const request_;
};

// ChatVideo: the upload, then the same stream as Chat.
class ChatVideoCall : public services::ReadAllThenStreamReactor<v1::ChatVideoRequest, v1::ChatResponse> {
 public:
  ChatVideoCall(ChatService* service, grpc::CallbackServerContext* context)
      : ReadAllThenStreamReactor(context, service->metrics(), "ChatVideo"), service_(service) {
    if (absl::Status denied = service->options().auth.Check(*context); !denied.ok()) {
      Close(denied);
      return;
    }
    if (absl::Status slot = service->upload_slots()->Acquire(); !slot.ok()) {
      Close(slot);
      return;
    }
    holds_slot_ = true;
    StartReading();
  }
  ~ChatVideoCall() override {
    if (holds_slot_) service_->upload_slots()->Release();
  }

 protected:
  absl::Status OnMessage(const v1::ChatVideoRequest& message) override {
    if (first_) {
      first_ = false;
      if (!message.has_request()) return absl::InvalidArgumentError("the first ChatVideoRequest carries no request");
      request_ = message.request();
      settings_ = message.video();
      if (settings_.num_segments() < 0 || settings_.max_num() < 0)
        return absl::InvalidArgumentError("video.num_segments and video.max_num must be >= 0");
      if (settings_.num_segments() > service_->options().max_segments)
        return absl::ResourceExhaustedError(absl::StrCat("video.num_segments ", settings_.num_segments(),
                                                         " is over the limit of ", service_->options().max_segments));
    } else if (message.has_request()) {
      return absl::InvalidArgumentError("only the first ChatVideoRequest may carry a request");
    }
    if (static_cast<int64_t>(video_.size() + message.video_data().size()) > service_->options().max_video_bytes)
      return absl::ResourceExhaustedError(
          absl::StrCat("the video is over the limit of ", service_->options().max_video_bytes, " bytes"));
    video_.append(message.video_data());
    return absl::OkStatus();
  }

  void OnAllReceived() override {
    if (first_) {
      Close(absl::InvalidArgumentError("no ChatVideoRequest was sent"));
      return;
    }
    if (video_.empty()) {
      Close(absl::InvalidArgumentError("the video is empty (no video_data)"));
      return;
    }
    const CallState call{this, Deadline(context(), service_->options().default_deadline), {}};
    const absl::Status queued = service_->queue()->Submit([this, call] {
      const absl::Status s =
          service_->Run(request_, &video_, settings_, call, [this](v1::ChatResponse r) { return Write(std::move(r)); });
      Close(s);
    });
    if (!queued.ok()) Close(queued);
  }

 private:
  ChatService* const service_;
  bool first_ = true;
  v1::ChatRequest request_;
  v1::VideoSettings settings_;
  std::string video_;
  bool holds_slot_ = false;
};

// ChatUnary: the final message only.
class ChatUnaryCall : public grpc::ServerUnaryReactor, public CallCancellation {
 public:
  ChatUnaryCall(ChatService* service, grpc::CallbackServerContext* context, const v1::ChatRequest* request,
                v1::ChatResponse* response)
      : service_(service), context_(context), start_(Clock::now()) {
    service_->metrics()->in_flight()->Add(1);
    if (absl::Status denied = service->options().auth.Check(*context); !denied.ok()) {
      Done(denied);
      return;
    }
    const CallState call{this, Deadline(context, service->options().default_deadline), {}};
    const absl::Status queued = service->queue()->Submit([this, call, request, response] {
      const absl::Status s =
          service_->Run(*request, nullptr, v1::VideoSettings(), call, [response](v1::ChatResponse r) {
            if (r.has_final()) *response = std::move(r);
            return true;
          });
      Done(s);
    });
    if (!queued.ok()) Done(queued);
  }

  bool cancelled() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return cancelled_ || context_->IsCancelled();
  }
  void SetCancelHook(std::function<void()> hook) override {
    std::lock_guard<std::mutex> lock(mu_);
    hook_ = std::move(hook);
    if (hook_ && cancelled_) hook_();
  }
  void OnCancel() override {
    std::lock_guard<std::mutex> lock(mu_);
    cancelled_ = true;
    if (hook_) hook_();
  }
  void OnDone() override {
    service_->metrics()->Record("ChatUnary", services::GrpcCodeName(code_),
                                std::chrono::duration<double>(Clock::now() - start_).count());
    service_->metrics()->in_flight()->Add(-1);
    delete this;
  }

 private:
  void Done(const absl::Status& s) {
    const grpc::Status g = services::ToGrpcStatus(s);
    code_ = g.error_code();
    Finish(g);
  }
  ChatService* const service_;
  grpc::CallbackServerContext* const context_;
  const Clock::time_point start_;
  mutable std::mutex mu_;
  bool cancelled_ = false;
  std::function<void()> hook_;
  grpc::StatusCode code_ = grpc::StatusCode::UNKNOWN;
};

}  // namespace

ChatService::ChatService(const ChatServiceOptions& options, const PromptBuilder* prompt, ChatStages* stages,
                         services::MetricsRegistry* registry)
    : options_(options),
      prompt_(prompt),
      stages_(stages),
      metrics_(registry, "internvl.v1.InternVL"),
      tokens_(registry->GetCounter("internvl_gateway_tokens_total", "tokens streamed to clients")),
      ttft_(registry->GetHistogram("internvl_gateway_time_to_first_token_seconds", "request start to the first token",
                                   services::DefaultLatencyBuckets())),
      queue_(std::make_unique<services::WorkQueue>(
          options.threads, options.max_queued,
          registry->GetGauge("internvl_queue_depth", "Requests waiting for a worker", {{"service", "gateway"}}),
          registry->GetGauge("internvl_busy_workers", "Workers running a request", {{"service", "gateway"}}))),
      upload_slots_(options.max_concurrent_uploads, "--max-concurrent-uploads") {}

ChatService::~ChatService() = default;

grpc::ServerWriteReactor<v1::ChatResponse>* ChatService::Chat(grpc::CallbackServerContext* context,
                                                              const v1::ChatRequest* request) {
  using Reactor = grpc::ServerWriteReactor<v1::ChatResponse>;
  if (Reactor* refused = services::RefuseIfDraining<Reactor>(metrics(), "Chat")) return refused;
  return new ChatCall(this, context, request);
}
grpc::ServerBidiReactor<v1::ChatVideoRequest, v1::ChatResponse>* ChatService::ChatVideo(
    grpc::CallbackServerContext* context) {
  using Reactor = grpc::ServerBidiReactor<v1::ChatVideoRequest, v1::ChatResponse>;
  if (Reactor* refused = services::RefuseIfDraining<Reactor>(metrics(), "ChatVideo")) return refused;
  return new ChatVideoCall(this, context);
}
grpc::ServerUnaryReactor* ChatService::ChatUnary(grpc::CallbackServerContext* context, const v1::ChatRequest* request,
                                                 v1::ChatResponse* response) {
  if (auto* refused = services::RefuseIfDraining<grpc::ServerUnaryReactor>(metrics(), "ChatUnary")) return refused;
  return new ChatUnaryCall(this, context, request, response);
}

absl::Status ChatService::Run(const v1::ChatRequest& request, const std::string* video,
                              const v1::VideoSettings& video_settings, const CallState& call,
                              const std::function<bool(v1::ChatResponse)>& emit) {
  const auto t_start = Clock::now();
  // Validation: cheap checks before any stage is called.
  if (request.text().empty()) return absl::InvalidArgumentError("text is empty");
  if (video != nullptr && request.images_size() > 0)
    return absl::InvalidArgumentError("a video request carries no images");
  if (request.images_size() > options_.max_images)
    return absl::ResourceExhaustedError(
        absl::StrCat(request.images_size(), " images, over the limit of ", options_.max_images));
  for (int i = 0; i < request.images_size(); ++i) {
    if (request.images(i).empty()) return absl::InvalidArgumentError(absl::StrCat("image ", i, " is empty"));
    if (static_cast<int64_t>(request.images(i).size()) > options_.max_image_bytes)
      return absl::ResourceExhaustedError(absl::StrCat("image ", i, " is ", request.images(i).size(),
                                                       " bytes, over the limit of ", options_.max_image_bytes));
  }
  if (request.max_num() < 0) return absl::InvalidArgumentError("max_num must be >= 0");
  // max_num tiles the images (a video's frames have their own max_num).
  if (request.images_size() > 0 && request.max_num() > options_.max_tiles)
    return absl::ResourceExhaustedError(
        absl::StrCat("max_num ", request.max_num(), " is over the limit of ", options_.max_tiles, " (--max-tiles)"));
  int64_t text_bytes = static_cast<int64_t>(request.text().size());
  for (const auto& turn : request.history()) text_bytes += turn.question().size() + turn.answer().size();
  text_bytes += static_cast<int64_t>(request.system_message().size());
  if (text_bytes > options_.max_text_bytes)
    return absl::ResourceExhaustedError(absl::StrCat("the question and history are ", text_bytes,
                                                     " bytes, over the limit of ", options_.max_text_bytes,
                                                     " (--max-text-bytes)"));
  INTERNVL_ASSIGN_OR_RETURN(GenerationSettings settings,
                            services::FromProto(request.generation(), options_.max_new_tokens_limit));
  // MiniMonkey: its settings only for a MiniMonkey model; SCM on one image.
  const bool minimonkey = options_.minimonkey || prompt_->config().minimonkey;
  if (!minimonkey && (request.has_minimonkey() || request.scm()))
    return absl::InvalidArgumentError(
        "minimonkey and scm apply to MiniMonkey models only; this gateway's model is not one "
        "(start it with --minimonkey if it is)");
  if (request.scm() && (video != nullptr || request.images_size() != 1))
    return absl::InvalidArgumentError(
        absl::StrCat("scm (scale compression) needs exactly one image, got ",
                     video != nullptr ? "a video" : absl::StrCat(request.images_size(), " images")));
  std::optional<preprocess::MiniMonkeyOptions> msac;
  if (minimonkey && video == nullptr && request.images_size() > 0) {
    services::ImageLimits limits;
    limits.max_tiles = options_.max_tiles;
    limits.image_size = prompt_->config().image_size();
    INTERNVL_ASSIGN_OR_RETURN(msac, services::ResolveMiniMonkey(request.minimonkey(), limits));
  }
  const std::string request_id = request.request_id().empty() ? NewRequestId() : request.request_id();

  // The prompt's text tokens, before any media work: rendered with one tile
  // per image, less those tiles' <IMG_CONTEXT> tokens.
  ChatRequest chat;
  chat.question = request.text();
  for (const auto& turn : request.history()) chat.history.emplace_back(turn.question(), turn.answer());
  chat.history_given = request.history_size() > 0;
  if (request.has_system_message()) chat.system_message = request.system_message();
  if (video != nullptr) chat.video = std::string();  // selects the "FrameN:" question rule
  const int media_count = video != nullptr ? (video_settings.num_segments() > 0 ? video_settings.num_segments() : 8)
                                           : request.images_size();
  INTERNVL_ASSIGN_OR_RETURN(std::vector<int> one_tile_ids, prompt_->PromptIds(chat, std::vector<int>(media_count, 1)));
  const int64_t per_tile = prompt_->config().num_image_token();
  const int64_t text_tokens = static_cast<int64_t>(one_tile_ids.size()) - media_count * per_tile;
  auto over_limit = [&](int64_t tiles) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the prompt would be ", text_tokens + tiles * per_tile, " tokens (", text_tokens, " text + ",
                     tiles, " tiles x ", per_tile, "), over the limit of ", options_.max_prompt_tokens,
                     " (--max-prompt-tokens): send fewer or smaller images, a lower max_num, or a shorter history"));
  };
  if (text_tokens > options_.max_prompt_tokens) return over_limit(0);
  CallState checked = call;
  checked.check_tiles = [&](int64_t tiles) {
    return text_tokens + tiles * per_tile > options_.max_prompt_tokens ? over_limit(tiles) : absl::OkStatus();
  };

  // The images' tile grids follow from their headers alone: a prompt over the
  // limit is refused before any pixel is decoded (the exact count after
  // tiling is checked again). A header that does not parse is left to the
  // preprocess stage to report.
  // SCM's block is scale A's grid of the (only) image x 256 tokens: also
  // known from its header.
  int64_t scm_high_tokens = 0;
  absl::Status first_header = absl::OkStatus();
  if (video == nullptr && request.images_size() > 0) {
    preprocess::TilingOptions tiling;
    tiling.max_num = request.max_num() > 0 ? request.max_num() : prompt_->config().max_dynamic_patch;
    tiling.image_size = prompt_->config().image_size();
    tiling.use_thumbnail = prompt_->config().use_thumbnail;
    tiling.minimonkey = msac;
    int64_t tiles = 0;
    bool known = true;
    for (int i = 0; i < request.images_size(); ++i) {
      auto header = preprocess::ProbeImage(request.images(i));
      if (!header.ok()) {
        if (i == 0) first_header = header.status();
        known = false;
        break;
      }
      const preprocess::TilePlan plan = preprocess::PlanTiles(header->width, header->height, tiling);
      if (i == 0 && request.scm()) scm_high_tokens = plan.grid.count() * prompt_->config().num_image_token();
      tiles += plan.count;
    }
    if (known) INTERNVL_RETURN_IF_ERROR(checked.check_tiles(tiles));
  }

  // Media -> embeddings.
  MediaEmbeddings media;
  if (video != nullptr) {
    INTERNVL_ASSIGN_OR_RETURN(media, stages_->EncodeVideo(*video, video_settings, checked));
  } else if (request.images_size() > 0) {
    v1::PreprocessImagesRequest pre;
    *pre.mutable_images() = request.images();
    pre.mutable_tiling()->set_max_num(request.max_num() > 0 ? request.max_num() : prompt_->config().max_dynamic_patch);
    pre.mutable_tiling()->set_use_thumbnail(prompt_->config().use_thumbnail);
    if (msac) *pre.mutable_tiling()->mutable_minimonkey() = services::MiniMonkeyToProto(*msac);
    INTERNVL_ASSIGN_OR_RETURN(media, stages_->EncodeImages(pre, checked));
  }
  // The encoder decoded an image whose header ProbeImage could not read.
  if (request.scm() && scm_high_tokens == 0)
    return first_header.ok() ? absl::InternalError("SCM: no image header") : first_header;

  // The prompt, exactly as chat() builds it.
  INTERNVL_ASSIGN_OR_RETURN(std::vector<int> ids, prompt_->PromptIds(chat, media.num_patches));
  if (static_cast<int64_t>(ids.size()) > options_.max_prompt_tokens)
    return absl::ResourceExhaustedError(absl::StrCat("the prompt is ", ids.size(), " tokens, over the limit of ",
                                                     options_.max_prompt_tokens, " (--max-prompt-tokens)"));

  // Generation, streamed. With stop strings the text goes through `stops`:
  // each token's text is checked as it comes (HF stop_strings: a match ends
  // at this token), and what could still grow into a stop string is held
  // back until it cannot.
  tokenizer::StreamingDetokenizer detok(&prompt_->tokenizer(), /*skip_special_tokens=*/true);
  tokenizer::StopStrings stops(settings.stop);
  size_t shown = 0;       // bytes of stops.text() streamed
  std::vector<int> seen;  // ids streamed, when stop strings are checked
  double ttft_ms = 0, generate_start_ms = MsSince(t_start);
  bool first = true;
  bool client_gone = false;
  auto send = [&](std::string delta) {
    if (delta.empty()) return;
    v1::ChatResponse r;
    r.set_delta(std::move(delta));
    if (!emit(std::move(r))) client_gone = true;
  };
  auto show_safe = [&] {
    const size_t safe = stops.Safe();
    if (safe > shown) send(stops.text().substr(shown, safe - shown));
    shown = std::max(shown, safe);
  };
  GenerateInput input{request_id, ids, settings, &media.embeddings, scm_high_tokens};
  auto sink = [&](const std::vector<int>& new_ids) {
    if (first) {
      ttft_ms = MsSince(t_start);
      ttft_->Observe(ttft_ms / 1e3);
      first = false;
    }
    tokens_->Increment(static_cast<double>(new_ids.size()));
    if (stops.empty()) {
      send(detok.Put(absl::MakeConstSpan(new_ids)));
    } else {
      for (int id : new_ids) {
        seen.push_back(id);
        if (stops.Append(detok.Put(absl::MakeConstSpan(&id, 1)))) break;
      }
      show_safe();
      if (stops.matched()) return false;  // ends the stage call; answered below
    }
    return !client_gone && !(call.cancellation && call.cancellation->cancelled());
  };
  absl::StatusOr<GenerateOutcome> generated = stages_->Generate(input, sink, call);
  GenerateOutcome out;
  if (stops.matched()) {
    // The stage call was ended on purpose: the answer is what was streamed.
    out.token_ids = seen;
    out.finish_reason = FinishReason::kStop;
    out.prefill_ms = ttft_ms - generate_start_ms;
    out.decode_ms = MsSince(t_start) - ttft_ms;
    if (generated.ok()) out.cached_prompt_tokens = generated->cached_prompt_tokens;
  } else {
    INTERNVL_ASSIGN_OR_RETURN(out, std::move(generated));
    std::string tail = detok.Flush();
    if (stops.empty()) {
      send(std::move(tail));
    } else {
      // A match completed by the last bytes is still a stop string.
      if (stops.Append(tail) && !out.stop_token_id) out.finish_reason = FinishReason::kStop;
      show_safe();
      if (!stops.matched() && shown < stops.text().size()) send(stops.text().substr(shown));
    }
  }

  v1::ChatResponse last;
  v1::ChatFinal* f = last.mutable_final();
  std::vector<int> with_stop = out.token_ids;
  if (out.stop_token_id) with_stop.push_back(*out.stop_token_id);
  f->set_response(stops.matched() ? prompt_->ResponseText(stops.text()) : prompt_->Response(with_stop));
  for (int id : out.token_ids) f->add_token_ids(id);
  if (out.stop_token_id) f->set_stop_token_id(*out.stop_token_id);
  f->set_prompt_tokens(out.scm.applied ? out.prompt_tokens : static_cast<int>(ids.size()));
  if (out.scm.applied) *f->mutable_scm() = services::ToProto(out.scm);
  f->set_completion_tokens(static_cast<int>(out.token_ids.size()));
  f->set_finish_reason(services::ToProto(out.finish_reason));
  f->set_cached_prompt_tokens(out.cached_prompt_tokens);
  for (int n : media.num_patches) f->add_num_patches(n);
  for (int i : media.frame_indices) f->add_frame_indices(i);
  f->set_cached_images(media.cached_images);
  f->set_request_id(request_id);
  f->set_seed(settings.seed);
  v1::Timings* t = f->mutable_timings();
  t->set_preprocess_ms(media.preprocess_ms);
  t->set_vision_ms(media.vision_ms);
  t->set_queue_ms(out.queue_ms);
  t->set_prefill_ms(out.prefill_ms);
  t->set_decode_ms(out.decode_ms);
  t->set_time_to_first_token_ms(ttft_ms);
  t->set_total_ms(MsSince(t_start));
  if (with_stop.size() >= 2 && out.decode_ms > 0)
    t->set_decode_tokens_per_second((with_stop.size() - 1) / (out.decode_ms / 1e3));
  emit(std::move(last));
  return absl::OkStatus();
}

}  // namespace internvl::gateway
