// Next-token selection with Hugging Face generate() semantics (transformers
// 4.37 generation/logits_process.py), in HF's order:
//   1. RepetitionPenaltyLogitsProcessor (greedy and sampling): for every token
//      id already in the row's context, score < 0 ? score * p : score / p.
//      Then (not HF's: OpenAI's frequency / presence penalties, as vLLM
//      applies them) each generated id's score minus frequency x its count
//      + presence.
//   2. (sampling only) TemperatureLogitsWarper: scores / temperature.
//   3. TopKLogitsWarper: scores below the k-th largest -> -inf (ties kept).
//   4. TopPLogitsWarper: sort ascending, cumulative softmax; ids whose
//      cumulative probability <= 1 - top_p -> -inf, the most likely always kept.
//   then softmax and one multinomial draw per row; greedy = argmax.
// Warpers that are no-ops in HF (temperature 1, top_k 0, top_p 1) are skipped.
// Unlike HF (whose multinomial then raises), a valid but extreme temperature
// or penalty that overflows fp32 draws from the distribution's limit: an even
// draw among the maximal scores. NaN scores still fail the draw.
//
// On fp32 CPU logits the rows are processed in our own loops on the calling
// thread (no libtorch op, whose OpenMP threads would then spin against the
// decode threads): the penalty and temperature give Process's bits, top-k
// keeps what torch.topk's k-th value keeps, the kept ids' softmax is our fp32
// row kernel's (core/nn/softmax.h), top-p's cumulative sum is summed in
// double and compared in fp32 (as torch's cumsum), and a draw takes one
// 53-bit uniform from the seeded generator against the kept ids' cumulative
// probabilities (libtorch's multinomial: one exponential per vocabulary
// entry). Equal scores at top-p's boundary go in id order (in
// torch.sort's they go in std::sort's, which is chance). Top-p without top-k
// (a sort of the whole vocabulary), rows whose sampled scores are not all
// finite, and a penalty over a context id outside the vocabulary (the ops'
// error) take the libtorch ops. A row of InternVL2's 151655 logits, the
// ops against these loops (2-core Zen 4): temperature 0.7, top_k 50, top_p
// 0.9: 4.98 -> 0.15 ms; temperature alone (top_k 0): 1.88 -> 0.86; greedy
// 0.135 -> 0.087; greedy with a penalty 0.154 -> 0.120.
//
// The context for the repetition penalty is what HF's `input_ids` holds: for
// InternVL's chat() (generate(inputs_embeds=...)) that is only the generated
// tokens, so Generate passes the generated ids unless told otherwise.
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace internvl::llm {

// Defaults equal HF GenerationConfig's (note top_k = 50 applies whenever
// do_sample is set and top_k is not overridden, as in HF).
struct SamplingParams {
  bool do_sample = false;  // false: greedy
  double temperature = 1.0;
  int64_t top_k = 50;  // 0 disables
  double top_p = 1.0;
  double repetition_penalty = 1.0;  // 1 disables
  // OpenAI's (and vLLM's) additive penalties, after the repetition penalty:
  // each id generated so far loses frequency_penalty x its count +
  // presence_penalty. Not in HF generate(); 0 disables; in [-2, 2].
  double frequency_penalty = 0.0;
  double presence_penalty = 0.0;
  uint64_t seed = 0;

  bool AdditivePenalties() const { return frequency_penalty != 0 || presence_penalty != 0; }

  // INVALID_ARGUMENT for values HF rejects (temperature <= 0 when sampling,
  // top_p outside (0, 1], negative top_k, penalty <= 0) and additive
  // penalties outside [-2, 2] (OpenAI's range).
  absl::Status Validate() const;
};

class Sampler {
 public:
  // `params` must be valid (see Validate; Create checks it).
  static absl::StatusOr<Sampler> Create(const SamplingParams& params);

  // Applies the processors/warpers above to fp32 logits [B, V], out of place.
  // `context[b]` holds row b's ids for the repetition penalty (may be empty),
  // `generated[b]` its generated ids for the additive penalties (counted).
  at::Tensor Process(const at::Tensor& logits, const std::vector<std::vector<int64_t>>& context,
                     const std::vector<std::vector<int64_t>>& generated = {}) const;

  // What a draw from row `row` [V] of fp32 logits chooses among (sampling
  // only), into `out` (its buffers reused): the ids Process leaves finite
  // (ascending), their scores there (the same bits) and their
  // probabilities. False where the row takes the libtorch ops (see above).
  struct Kept {
    std::vector<int64_t> ids;
    std::vector<float> scores;
    std::vector<float> probs;
  };
  bool Candidates(const float* row, int64_t vocab, const std::vector<int64_t>& context, Kept& out,
                  const std::vector<int64_t>& generated = {}) const;

  // Picks one id per row from logits [B, V]. Deterministic for a given seed
  // and call sequence.
  absl::StatusOr<std::vector<int64_t>> Next(const at::Tensor& logits, const std::vector<std::vector<int64_t>>& context,
                                            const std::vector<std::vector<int64_t>>& generated = {});

  const SamplingParams& params() const { return params_; }

 private:
  explicit Sampler(const SamplingParams& params);
  SamplingParams params_;
  at::Generator gen_;
};

}  // namespace internvl::llm
