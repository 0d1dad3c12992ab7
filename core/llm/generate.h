// Autoregressive generation over a CausalLM: one prefill forward over the
// prompt embeddings into a preallocated KVCache, then one forward per token
// with the lm_head on the last position only, as HF generate() does for
// InternVLChatModel.generate (inputs_embeds, use_cache=True).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "core/llm/causal_lm.h"
#include "core/llm/kv_cache.h"
#include "core/llm/sampler.h"

namespace internvl::llm {

struct GenerationOptions {
  int64_t max_new_tokens = 1024;
  // Generation of a row stops after it produces one of these ids (the id is
  // kept in the output, as HF returns it). InternVL's chat() stops on
  // `<|im_end|>` (template separator) plus generation_config's eos ids.
  std::vector<int64_t> stop_ids;
  SamplingParams sampling;
  // Extra repetition-penalty context per row (HF's input_ids before the new
  // tokens). Empty = none, which is what chat() with inputs_embeds does.
  std::vector<std::vector<int64_t>> penalty_context;
  // Streaming, batch of one: called with each new token id as soon as it is
  // chosen (the stop id included). Returning false cancels generation.
  std::function<bool(int token_id)> on_token;
  // Streaming, any batch: called with (row, id) for each unfinished row.
  std::function<bool(int row, int token_id)> on_row_token;
};

enum class FinishReason { kStop, kLength, kCancelled };

struct GenerateResult {
  // New tokens only, per row (a finished row gets nothing more).
  std::vector<std::vector<int64_t>> tokens;
  std::vector<FinishReason> finish;
  int64_t prompt_length = 0;  // T of the prefill (incl. padding)
  double prefill_seconds = 0;
  double decode_seconds = 0;  // all steps after the first token
};

// Generates for `inputs_embeds` [B, T, H] (left padding described by
// `attention_mask` [B, T], undefined = none). Uses `cache` if given (Reset and
// reused; must hold T + max_new_tokens slots and B rows), else allocates one.
// Runs under at::InferenceMode. Errors: INVALID_ARGUMENT for bad options or
// shapes, RESOURCE_EXHAUSTED when the cache is too small.
absl::StatusOr<GenerateResult> Generate(CausalLM& lm, const at::Tensor& inputs_embeds,
                                        const GenerationOptions& options, const at::Tensor& attention_mask = {},
                                        KVCache* cache = nullptr);

}  // namespace internvl::llm
