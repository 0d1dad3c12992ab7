#include "core/chat/llm_engine.h"

#include <ATen/ATen.h>

#include <mutex>

#include "absl/strings/str_cat.h"
#include "core/llm/causal_lm.h"
#include "core/llm/generate.h"
#include "core/nn/torch_util.h"
#include "core/status.h"
#include "core/vision/vision_model_torch.h"

namespace internvl {

struct LlmEngine::Impl {
  std::unique_ptr<llm::CausalLM> lm;
  std::mutex mu;  // CausalLM::Forward is not thread-safe (dynamic-NTK rope state)
};

LlmEngine::LlmEngine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
LlmEngine::~LlmEngine() = default;

absl::Status ValidateGenerationSettings(const GenerationSettings& g) {
  if (g.max_new_tokens < 1) return absl::InvalidArgumentError("max_new_tokens must be at least 1");
  if (!(g.temperature > 0))
    return absl::InvalidArgumentError(absl::StrCat("temperature must be > 0, got ", g.temperature));
  if (!(g.top_p > 0 && g.top_p <= 1))
    return absl::InvalidArgumentError(absl::StrCat("top_p must be in (0, 1], got ", g.top_p));
  if (g.top_k < 0) return absl::InvalidArgumentError(absl::StrCat("top_k must be >= 0, got ", g.top_k));
  if (!(g.repetition_penalty > 0))
    return absl::InvalidArgumentError(absl::StrCat("repetition_penalty must be > 0, got ", g.repetition_penalty));
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<LlmEngine>> LlmEngine::Load(const std::string& model_dir, const InternVLConfig& config,
                                                           const LlmEngineOptions& options) {
  auto impl = std::make_unique<Impl>();
  SetTorchThreads(options.threads);
  INTERNVL_ASSIGN_OR_RETURN(at::ScalarType requested, ParseComputeDType(options.dtype));
  INTERNVL_ASSIGN_OR_RETURN(auto store, TensorStore::OpenDir(model_dir));
  INTERNVL_ASSIGN_OR_RETURN(impl->lm, llm::CausalLM::Load(config.llm, *store, llm::Precision::ForRequested(requested)));
  return std::unique_ptr<LlmEngine>(new LlmEngine(std::move(impl)));
}

int64_t LlmEngine::hidden_size() const { return impl_->lm->config().hidden_size; }
int64_t LlmEngine::vocab_size() const { return impl_->lm->config().vocab_size; }
std::string LlmEngine::dtype_name() const { return impl_->lm->dtype() == at::kBFloat16 ? "bf16" : "fp32"; }

namespace {
const char* FinishName(llm::FinishReason r) {
  switch (r) {
    case llm::FinishReason::kStop:
      return "stop";
    case llm::FinishReason::kLength:
      return "length";
    case llm::FinishReason::kCancelled:
      return "cancelled";
  }
  return "?";
}
}  // namespace

absl::StatusOr<LlmGeneration> LlmEngine::Generate(const std::vector<int64_t>& prompt_ids,
                                                  const HostTensor& image_embeddings, int64_t img_context_id,
                                                  const std::vector<int64_t>& stop_ids,
                                                  const GenerationSettings& settings,
                                                  const std::function<bool(int)>& on_token) {
  INTERNVL_RETURN_IF_ERROR(ValidateGenerationSettings(settings));
  if (prompt_ids.empty()) return absl::InvalidArgumentError("the prompt is empty");
  const int64_t vocab = vocab_size();
  int64_t image_tokens = 0;
  for (int64_t id : prompt_ids) {
    if (id < 0 || id >= vocab)
      return absl::InvalidArgumentError(absl::StrCat("token id ", id, " is outside the vocabulary [0, ", vocab, ")"));
    if (id == img_context_id) ++image_tokens;
  }
  const int64_t hidden = hidden_size();
  int64_t rows = 0;
  if (!image_embeddings.empty()) {
    if (image_embeddings.shape.back() != hidden)
      return absl::InvalidArgumentError(absl::StrCat("image embeddings have hidden size ",
                                                     image_embeddings.shape.back(), ", the model has ", hidden));
    rows = image_embeddings.numel() / hidden;
  }
  if (rows != image_tokens)
    return absl::InvalidArgumentError(
        absl::StrCat(rows, " image embedding rows for ", image_tokens, " <IMG_CONTEXT> tokens in the prompt"));

  std::lock_guard<std::mutex> lock(impl_->mu);
  llm::CausalLM& lm = *impl_->lm;
  at::InferenceMode guard;
  const int64_t len = static_cast<int64_t>(prompt_ids.size());
  at::Tensor ids = at::from_blob(const_cast<int64_t*>(prompt_ids.data()), {1, len}, at::kLong).clone();
  INTERNVL_ASSIGN_OR_RETURN(at::Tensor embeds, lm.Embed(ids));
  if (rows > 0) {
    INTERNVL_ASSIGN_OR_RETURN(at::Tensor vit, TorchGuard("casting image embeddings", [&] {
                                return HostToTensor(image_embeddings).reshape({rows, hidden}).to(lm.dtype());
                              }));
    INTERNVL_ASSIGN_OR_RETURN(embeds, llm::ScatterImageEmbeddings(embeds, ids, img_context_id, vit));
  }
  llm::GenerationOptions gen;
  gen.max_new_tokens = settings.max_new_tokens;
  gen.stop_ids = stop_ids;
  gen.sampling.do_sample = settings.do_sample;
  gen.sampling.temperature = settings.temperature;
  gen.sampling.top_p = settings.top_p;
  gen.sampling.top_k = settings.top_k;
  gen.sampling.repetition_penalty = settings.repetition_penalty;
  gen.sampling.seed = settings.seed;
  gen.penalty_context = {prompt_ids};
  if (on_token) gen.on_token = on_token;
  INTERNVL_ASSIGN_OR_RETURN(llm::GenerateResult gr, llm::Generate(lm, embeds, gen));
  LlmGeneration out;
  out.token_ids.assign(gr.tokens[0].begin(), gr.tokens[0].end());
  out.finish_reason = FinishName(gr.finish[0]);
  out.prefill_ms = gr.prefill_seconds * 1e3;
  out.decode_ms = gr.decode_seconds * 1e3;
  return out;
}

}  // namespace internvl
