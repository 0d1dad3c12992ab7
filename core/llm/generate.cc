#include "core/llm/generate.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>

#include "absl/strings/str_cat.h"
#include "core/nn/torch_util.h"
#include "core/status.h"

namespace internvl::llm {
namespace {

double Seconds(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

}  // namespace

absl::StatusOr<GenerateResult> Generate(CausalLM& lm, const at::Tensor& inputs_embeds,
                                        const GenerationOptions& options, const at::Tensor& attention_mask,
                                        KVCache* cache) {
  if (options.max_new_tokens < 1) {
    return absl::InvalidArgumentError(absl::StrCat("max_new_tokens must be >= 1, got ", options.max_new_tokens));
  }
  if (!inputs_embeds.defined() || inputs_embeds.dim() != 3 || inputs_embeds.size(1) < 1) {
    return absl::InvalidArgumentError("Generate: inputs_embeds must be [B, T>0, H]");
  }
  const int64_t batch = inputs_embeds.size(0), prompt = inputs_embeds.size(1);
  if (options.on_token && batch != 1) {
    return absl::InvalidArgumentError("Generate: on_token streams a batch of one; use on_row_token");
  }
  if (!options.penalty_context.empty() && static_cast<int64_t>(options.penalty_context.size()) != batch) {
    return absl::InvalidArgumentError("Generate: penalty_context needs one entry per row");
  }
  INTERNVL_ASSIGN_OR_RETURN(Sampler sampler, Sampler::Create(options.sampling));
  at::InferenceMode inference;

  // The last new token is never fed back, so T + max_new_tokens - 1 slots.
  const int64_t needed = prompt + options.max_new_tokens - 1;
  std::unique_ptr<KVCache> owned;
  if (cache == nullptr) {
    INTERNVL_ASSIGN_OR_RETURN(owned, lm.NewCache(batch, needed));
    cache = owned.get();
  } else {
    cache->Reset();
    if (cache->batch() != batch || cache->max_len() < needed) {
      return absl::ResourceExhaustedError(absl::StrCat("Generate: cache holds ", cache->batch(), " x ",
                                                       cache->max_len(), ", need ", batch, " x ", needed));
    }
  }

  GenerateResult result;
  result.prompt_length = prompt;
  result.tokens.assign(batch, {});
  result.finish.assign(batch, FinishReason::kLength);
  std::vector<bool> done(batch, false);
  std::vector<std::vector<int64_t>> context =
      options.penalty_context.empty() ? std::vector<std::vector<int64_t>>(batch) : options.penalty_context;

  const auto t0 = std::chrono::steady_clock::now();
  ForwardOptions prefill;
  prefill.attention_mask = attention_mask;
  INTERNVL_ASSIGN_OR_RETURN(at::Tensor logits, lm.Forward(inputs_embeds, cache, prefill));
  const auto t1 = std::chrono::steady_clock::now();
  result.prefill_seconds = Seconds(t0, t1);

  at::Tensor next = at::empty({batch, 1}, at::TensorOptions().dtype(at::kLong));
  for (int64_t step = 0; step < options.max_new_tokens; ++step) {
    INTERNVL_ASSIGN_OR_RETURN(std::vector<int64_t> ids, sampler.Next(logits, context));
    bool cancelled = false;
    for (int64_t b = 0; b < batch; ++b) {
      if (done[b]) continue;
      const int64_t id = ids[b];
      result.tokens[b].push_back(id);
      context[b].push_back(id);
      if (options.on_token && !options.on_token(static_cast<int>(id))) cancelled = true;
      if (options.on_row_token && !options.on_row_token(static_cast<int>(b), static_cast<int>(id))) cancelled = true;
      if (std::find(options.stop_ids.begin(), options.stop_ids.end(), id) != options.stop_ids.end()) {
        done[b] = true;
        result.finish[b] = FinishReason::kStop;
      }
    }
    if (cancelled) {
      for (int64_t b = 0; b < batch; ++b) {
        if (!done[b]) result.finish[b] = FinishReason::kCancelled;
      }
      break;
    }
    if (std::all_of(done.begin(), done.end(), [](bool d) { return d; })) break;
    if (step + 1 == options.max_new_tokens) break;
    // Finished rows keep being fed their last token (HF feeds pad_token_id);
    // rows are independent, so what they compute is never used.
    int64_t* next_ids = next.data_ptr<int64_t>();
    for (int64_t b = 0; b < batch; ++b) next_ids[b] = result.tokens[b].back();
    INTERNVL_ASSIGN_OR_RETURN(at::Tensor embeds, lm.Embed(next));
    INTERNVL_ASSIGN_OR_RETURN(logits, lm.Forward(embeds, cache));
  }
  result.decode_seconds = Seconds(t1, std::chrono::steady_clock::now());
  return result;
}

}  // namespace internvl::llm
