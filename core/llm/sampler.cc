#include "core/llm/sampler.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "core/nn/torch_util.h"

namespace internvl::llm {
namespace {
constexpr float kFilterScore = -std::numeric_limits<float>::infinity();
}  // namespace

absl::Status SamplingParams::Validate() const {
  if (do_sample && !(temperature > 0)) {
    return absl::InvalidArgumentError(absl::StrCat("temperature must be > 0 when sampling, got ", temperature));
  }
  if (top_k < 0) return absl::InvalidArgumentError(absl::StrCat("top_k must be >= 0, got ", top_k));
  if (!(top_p > 0 && top_p <= 1))
    return absl::InvalidArgumentError(absl::StrCat("top_p must be in (0, 1], got ", top_p));
  if (!(repetition_penalty > 0)) {
    return absl::InvalidArgumentError(absl::StrCat("repetition_penalty must be > 0, got ", repetition_penalty));
  }
  return absl::OkStatus();
}

Sampler::Sampler(const SamplingParams& params)
    : params_(params), gen_(at::make_generator<at::CPUGeneratorImpl>(params.seed)) {}

absl::StatusOr<Sampler> Sampler::Create(const SamplingParams& params) {
  if (absl::Status s = params.Validate(); !s.ok()) return s;
  return Sampler(params);
}

at::Tensor Sampler::Process(const at::Tensor& logits, const std::vector<std::vector<int64_t>>& context) const {
  at::Tensor scores = logits.to(at::kFloat, /*non_blocking=*/false, /*copy=*/true);
  if (params_.repetition_penalty != 1.0) {
    // RepetitionPenaltyLogitsProcessor: gather, scale, scatter back.
    const double p = params_.repetition_penalty;
    for (int64_t b = 0; b < scores.size(0) && b < static_cast<int64_t>(context.size()); ++b) {
      if (context[b].empty()) continue;
      at::Tensor ids = at::tensor(context[b], at::TensorOptions().dtype(at::kLong));
      at::Tensor row = scores.select(0, b);
      at::Tensor score = row.gather(0, ids);
      score = at::where(score < 0, score * p, score / p);
      row.scatter_(0, ids, score);
    }
  }
  if (!params_.do_sample) return scores;
  if (params_.temperature != 1.0) {  // TemperatureLogitsWarper
    at::Tensor warped = scores / params_.temperature;
    // A valid but extreme temperature (1e-45) overflows fp32: the largest
    // scores become inf (softmax NaN; HF's multinomial raises) or all turn
    // -inf. Shifted by its row's maximum first, the same distribution stays
    // finite: its limit, an even draw among the maxima (greedy). Rows whose
    // scores are already non-finite are left to the check in Next.
    if (!at::isfinite(warped.amax(-1)).all().item<bool>()) {
      at::Tensor top = scores.amax(-1, /*keepdim=*/true);
      warped = at::where(at::isfinite(top), (scores - top) / params_.temperature, warped);
    }
    scores = warped;
  }
  if (params_.top_k != 0) {
    // TopKLogitsWarper: remove scores < the k-th largest (ties with it stay).
    const int64_t k = std::min<int64_t>(std::max<int64_t>(params_.top_k, 1), scores.size(-1));
    at::Tensor kth = std::get<0>(at::topk(scores, k)).narrow(-1, k - 1, 1);
    scores = scores.masked_fill(scores < kth, kFilterScore);
  }
  if (params_.top_p < 1.0) {
    // TopPLogitsWarper: ascending sort; drop the low tail whose cumulative
    // probability is <= 1 - top_p, always keeping the most likely token.
    auto [sorted, order] = at::sort(scores, /*dim=*/-1, /*descending=*/false);
    at::Tensor cumulative = sorted.softmax(-1).cumsum(-1);
    at::Tensor remove_sorted = cumulative <= (1 - params_.top_p);
    remove_sorted.narrow(-1, remove_sorted.size(-1) - 1, 1).fill_(false);
    at::Tensor remove = remove_sorted.scatter(1, order, remove_sorted);
    scores = scores.masked_fill(remove, kFilterScore);
  }
  return scores;
}

absl::StatusOr<std::vector<int64_t>> Sampler::Next(const at::Tensor& logits,
                                                   const std::vector<std::vector<int64_t>>& context) {
  if (!logits.defined() || logits.dim() != 2) return absl::InvalidArgumentError("Sampler: logits must be [B, V]");
  if (!params_.do_sample && params_.repetition_penalty == 1.0 && logits.scalar_type() == at::kFloat &&
      logits.device().is_cpu() && logits.is_contiguous() && logits.size(1) > 0) {
    // Plain greedy: argmax of the logits as they are, in one pass on this
    // thread (no copy, and no libtorch parallel reduction, whose OpenMP
    // threads would then spin against the decode threads; gemv.h). The first
    // maximum wins and NaN counts as the maximum, as torch.argmax.
    const int64_t rows = logits.size(0), vocab = logits.size(1);
    std::vector<int64_t> ids(rows, 0);
    const float* data = logits.data_ptr<float>();
    for (int64_t b = 0; b < rows; ++b) {
      const float* row = data + b * vocab;
      int64_t best = 0;
      for (int64_t i = 1; i < vocab && !std::isnan(row[best]); ++i) {
        if (row[i] > row[best] || std::isnan(row[i])) best = i;
      }
      ids[b] = best;
    }
    return ids;
  }
  return TorchGuard("sampling", [&]() -> std::vector<int64_t> {
    at::Tensor scores = Process(logits, context);
    at::Tensor ids;
    if (!params_.do_sample) {
      ids = scores.argmax(-1);
    } else {
      // A row whose maximum is +inf (an extreme but valid penalty overflowing
      // fp32): the limit of its distribution, an even draw among those ids.
      at::Tensor top = scores.amax(-1, /*keepdim=*/true);
      if (at::isposinf(top).any().item<bool>()) {
        at::Tensor limit = at::where(scores == top, at::zeros_like(scores), at::full_like(scores, kFilterScore));
        scores = at::where(at::isposinf(top), limit, scores);
      }
      // NaN scores (the model's own arithmetic) still fail this row's draw.
      at::Tensor probs = scores.softmax(-1);
      ids = at::multinomial(probs, 1, /*replacement=*/false, gen_).squeeze(1);
    }
    ids = ids.to(at::kLong).contiguous();
    return std::vector<int64_t>(ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + ids.numel());
  });
}

}  // namespace internvl::llm
