#include "services/llm_decoder/llm_decoder_service.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/tokenizer/streaming_detokenizer.h"
#include "services/common/generation.h"
#include "services/common/log.h"
#include "services/common/reactors.h"
#include "services/common/streaming_reactor.h"
#include "services/common/tensor_chunks.h"

namespace internvl::services {

using Clock = std::chrono::steady_clock;

namespace {
double Ms(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double, std::milli>(b - a).count(); }

// Cancels a generation from a gRPC thread whether the cancellation comes
// before or after its handle exists.
class CancelLatch {
 public:
  void Cancel() {
    std::lock_guard<std::mutex> lock(mu_);
    cancelled_ = true;
    if (handle_) handle_->Cancel();
  }
  void Set(std::shared_ptr<GenerationHandle> handle) {
    std::lock_guard<std::mutex> lock(mu_);
    handle_ = std::move(handle);
    if (cancelled_) handle_->Cancel();
  }

 private:
  std::mutex mu_;
  bool cancelled_ = false;
  std::shared_ptr<GenerationHandle> handle_;
};

// No NaN or infinity among F32, BF16 or F16 elements (exponent bits all
// ones): such rows would poison every logit of their sequence.
bool AllFinite(const HostTensor& t) {
  auto check = [&](auto type_tag, auto exponent) {
    using Bits = decltype(type_tag);
    const size_t n = t.bytes.size() / sizeof(Bits);
    for (size_t i = 0; i < n; ++i) {
      Bits b;
      std::memcpy(&b, t.bytes.data() + i * sizeof(Bits), sizeof(Bits));
      if ((b & exponent) == exponent) return false;
    }
    return true;
  };
  switch (t.dtype) {
    case DType::kF32:
      return check(uint32_t{}, uint32_t{0x7F800000});
    case DType::kBF16:
      return check(uint16_t{}, uint16_t{0x7F80});
    case DType::kF16:
      return check(uint16_t{}, uint16_t{0x7C00});
    default:
      return true;
  }
}

}  // namespace

class LlmDecoderService::Call : public ReadAllThenStreamReactor<v1::GenerateRequest, v1::GenerateResponse> {
 public:
  Call(LlmDecoderService* service, grpc::CallbackServerContext* context)
      : ReadAllThenStreamReactor(context, &service->metrics_, "Generate"),
        service_(service),
        start_(Clock::now()),
        assembler_(0),
        detok_(&service->prompt_->tokenizer(), /*skip_special_tokens=*/true) {
    if (absl::Status slot = service->slots_.Acquire(); !slot.ok()) {
      Close(slot);
      return;
    }
    holds_slot_ = true;
    StartReading();
  }
  ~Call() override {
    if (holds_slot_) service_->slots_.Release();
  }

 protected:
  absl::Status OnMessage(const v1::GenerateRequest& request) override {
    switch (request.message_case()) {
      case v1::GenerateRequest::kStart:
        return OnStart(request.start());
      case v1::GenerateRequest::kImageEmbeddings:
        return OnChunk(request.image_embeddings());
      case v1::GenerateRequest::kCancel:
        cancel_requested_ = true;
        return absl::OkStatus();
      default:
        return absl::InvalidArgumentError("empty GenerateRequest message");
    }
  }

  void OnAllReceived() override {
    if (!started_) {
      Close(absl::InvalidArgumentError("the stream ended before a start message"));
      return;
    }
    if (cancel_requested_) {
      v1::GenerateResponse last;
      last.mutable_final()->set_finish_reason(v1::FINISH_REASON_CANCELLED);
      last.mutable_final()->set_prompt_tokens(static_cast<int>(prompt_ids_.size()));
      Write(std::move(last));
      Close(absl::OkStatus());
      return;
    }
    if (assembler_.started()) {
      Close(absl::InvalidArgumentError("the last image embedding tensor is incomplete"));
      return;
    }
    if (rows_received_ != expected_rows_) {
      Close(absl::InvalidArgumentError(absl::StrCat(
          "received ", rows_received_, " image embedding rows, the start message declared ", expected_rows_)));
      return;
    }
    const PromptBuilder& prompt = *service_->prompt_;
    EngineRequest request;
    request.request_id = request_id_;
    request.prompt_ids = std::move(prompt_ids_);
    request.image_embeddings = std::move(embeddings_);
    request.img_context_id = prompt.img_context_id();
    request.stop_ids = prompt.stop_ids();
    request.settings = settings_;
    request.scm_high_tokens = scm_high_tokens_;
    const auto deadline = context()->deadline();
    if (deadline != std::chrono::system_clock::time_point::max()) request.deadline = absl::FromChrono(deadline);
    prompt_tokens_ = static_cast<int>(request.prompt_ids.size());
    // Both callbacks run on the engine's step thread; the reactor lives until
    // Close(), which only the done callback (or a failed Submit) calls. So
    // once Submit succeeded `this` may be gone: the hook is installed before.
    auto latch = std::make_shared<CancelLatch>();
    SetCancelHook([latch] { latch->Cancel(); });
    request.on_token = [this](int id) { return OnToken(id); };
    auto handle =
        service_->engine_->Submit(std::move(request), [this](const absl::StatusOr<EngineResult>& r) { OnDone(r); });
    if (!handle.ok()) {
      Close(handle.status());
      return;
    }
    latch->Set(*std::move(handle));
  }

 private:
  absl::Status OnStart(const v1::GenerateStart& start) {
    if (started_) return absl::InvalidArgumentError("a second start message");
    started_ = true;
    request_id_ = start.request_id();
    stream_text_ = start.stream_text();
    const auto& opts = service_->options_;
    if (start.prompt_token_ids_size() == 0) return absl::InvalidArgumentError("prompt_token_ids is empty");
    if (start.prompt_token_ids_size() > opts.max_prompt_tokens)
      return absl::ResourceExhaustedError(absl::StrCat("the prompt has ", start.prompt_token_ids_size(),
                                                       " tokens, over the limit of ", opts.max_prompt_tokens));
    auto settings = FromProto(start.settings(), opts.max_new_tokens_limit);
    if (!settings.ok()) return settings.status();
    settings_ = *settings;
    prompt_ids_.assign(start.prompt_token_ids().begin(), start.prompt_token_ids().end());
    if (start.scm_high_tokens() < 0)
      return absl::InvalidArgumentError(absl::StrCat("scm_high_tokens must be >= 0, got ", start.scm_high_tokens()));
    scm_high_tokens_ = start.scm_high_tokens();
    const int64_t ctx = service_->prompt_->img_context_id();
    int64_t slots = 0;
    const int64_t vocab = service_->engine_->vocab_size();
    for (int64_t id : prompt_ids_) {
      if (id < 0 || id >= vocab)
        return absl::InvalidArgumentError(absl::StrCat("token id ", id, " is outside the vocabulary [0, ", vocab, ")"));
      slots += id == ctx;
    }
    expected_rows_ = start.image_embedding_rows();
    if (expected_rows_ != slots)
      return absl::InvalidArgumentError(absl::StrCat("image_embedding_rows is ", expected_rows_, " but the prompt has ",
                                                     slots, " <IMG_CONTEXT> tokens"));
    // Each row is at most hidden * 4 bytes (F32).
    hidden_ = service_->engine_->hidden_size();
    assembler_ = TensorAssembler(static_cast<uint64_t>(expected_rows_) * hidden_ * 4);
    return absl::OkStatus();
  }

  absl::Status OnChunk(const v1::TensorChunk& chunk) {
    if (!started_) return absl::InvalidArgumentError("image embeddings before the start message");
    if (absl::Status s = assembler_.Add(chunk); !s.ok()) return s;
    if (!assembler_.complete()) return absl::OkStatus();
    HostTensor t = assembler_.Take();
    if (t.dtype != DType::kF32 && t.dtype != DType::kBF16 && t.dtype != DType::kF16)
      return absl::InvalidArgumentError("image embeddings must be F32, BF16 or F16");
    if (t.shape.empty() || t.shape.back() != hidden_)
      return absl::InvalidArgumentError(absl::StrCat(
          "image embeddings have hidden size ", t.shape.empty() ? 0 : t.shape.back(), ", the model has ", hidden_));
    if (!AllFinite(t)) return absl::InvalidArgumentError("image embeddings hold NaN or infinite values");
    const int64_t rows = t.numel() / hidden_;
    if (rows_received_ + rows > expected_rows_)
      return absl::InvalidArgumentError(absl::StrCat("more image embedding rows than the declared ", expected_rows_));
    if (rows_received_ == 0) {
      embeddings_ = HostTensor(t.dtype, {0, hidden_});
    } else if (t.dtype != embeddings_.dtype) {
      return absl::InvalidArgumentError("image embedding tensors of one call must share a dtype");
    }
    embeddings_.bytes.insert(embeddings_.bytes.end(), t.bytes.begin(), t.bytes.end());
    embeddings_.shape[0] += rows;
    rows_received_ += rows;
    // The next tensor (if any) gets the remaining budget.
    assembler_ = TensorAssembler(static_cast<uint64_t>(expected_rows_ - rows_received_) * hidden_ * 4);
    return absl::OkStatus();
  }

  bool OnToken(int id) {
    if (first_) {
      ttft_ms_ = Ms(start_, Clock::now());
      service_->ttft_->Observe(ttft_ms_ / 1e3);
      first_ = false;
    }
    service_->tokens_->Increment();
    const auto& stops = service_->prompt_->stop_ids();
    if (std::find(stops.begin(), stops.end(), id) != stops.end()) return true;  // not streamed
    v1::GenerateResponse r;
    r.add_token_ids(id);
    if (stream_text_) r.set_text_delta(detok_.Put(id));
    Write(std::move(r));
    return !cancelled();
  }

  void OnDone(const absl::StatusOr<EngineResult>& result) {
    if (!result.ok()) {
      LogError(absl::StrCat("Generate ", request_id_, ": ", result.status().ToString()));
      Close(result.status());
      return;
    }
    if (result->finish_reason == FinishReason::kCancelled) service_->cancelled_->Increment();
    const auto& stops = service_->prompt_->stop_ids();
    v1::GenerateResponse last;
    if (stream_text_) {
      std::string tail = detok_.Flush();
      if (!tail.empty()) last.set_text_delta(tail);
    }
    v1::GenerateFinal* f = last.mutable_final();
    f->set_finish_reason(ToProto(result->finish_reason));
    std::vector<int> ids = result->token_ids;
    if (result->finish_reason == FinishReason::kStop && !ids.empty() &&
        std::find(stops.begin(), stops.end(), ids.back()) != stops.end()) {
      f->set_stop_token_id(ids.back());
      ids.pop_back();
    }
    for (int id : ids) f->add_token_ids(id);
    f->set_prompt_tokens(result->scm.applied ? result->prompt_tokens : prompt_tokens_);
    if (result->scm.applied) *f->mutable_scm() = ToProto(result->scm);
    f->set_completion_tokens(static_cast<int>(ids.size()));
    f->set_cached_prompt_tokens(result->cached_prompt_tokens);
    f->set_seed(settings_.seed);
    v1::Timings* t = f->mutable_timings();
    t->set_queue_ms(result->queue_ms);
    t->set_prefill_ms(result->prefill_ms);
    t->set_decode_ms(result->decode_ms);
    t->set_time_to_first_token_ms(ttft_ms_);
    t->set_total_ms(Ms(start_, Clock::now()));
    if (result->token_ids.size() >= 2 && result->decode_ms > 0)
      t->set_decode_tokens_per_second((result->token_ids.size() - 1) / (result->decode_ms / 1e3));
    Write(std::move(last));
    Close(absl::OkStatus());
  }

  LlmDecoderService* const service_;
  const Clock::time_point start_;
  bool started_ = false;
  bool cancel_requested_ = false;
  bool stream_text_ = false;
  std::string request_id_;
  GenerationSettings settings_;
  std::vector<int64_t> prompt_ids_;
  int prompt_tokens_ = 0;
  int64_t scm_high_tokens_ = 0;
  int64_t expected_rows_ = 0;
  int64_t rows_received_ = 0;
  int64_t hidden_ = 0;
  TensorAssembler assembler_;
  HostTensor embeddings_;
  tokenizer::StreamingDetokenizer detok_;
  bool first_ = true;
  double ttft_ms_ = 0;
  bool holds_slot_ = false;
};

LlmDecoderService::LlmDecoderService(const LlmDecoderServiceOptions& options, LlmEngine* engine,
                                     const PromptBuilder* prompt, MetricsRegistry* registry)
    : options_(options),
      engine_(engine),
      prompt_(prompt),
      metrics_(registry, "internvl.v1.LlmDecoder"),
      tokens_(registry->GetCounter("internvl_decoder_tokens_total", "tokens generated")),
      cancelled_(registry->GetCounter("internvl_decoder_cancelled_total", "generations stopped by the client")),
      ttft_(registry->GetHistogram("internvl_decoder_time_to_first_token_seconds",
                                   "call start to the first sampled token", DefaultLatencyBuckets())),
      slots_(options.max_concurrent_streams, "--max_concurrent_streams") {}

LlmDecoderService::~LlmDecoderService() = default;

grpc::ServerBidiReactor<v1::GenerateRequest, v1::GenerateResponse>* LlmDecoderService::Generate(
    grpc::CallbackServerContext* context) {
  using Reactor = grpc::ServerBidiReactor<v1::GenerateRequest, v1::GenerateResponse>;
  if (Reactor* refused = RefuseIfDraining<Reactor>(&metrics_, "Generate")) return refused;
  return new Call(this, context);
}

}  // namespace internvl::services
