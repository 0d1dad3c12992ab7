#include "core/llm/sampler.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <limits>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "core/llm/gemv.h"
#include "core/llm/gemv_kernels.h"
#include "core/llm/largest.h"
#include "core/nn/softmax.h"
#include "core/nn/torch_util.h"

namespace internvl::llm {
namespace {
constexpr float kFilterScore = -std::numeric_limits<float>::infinity();

// Whether the penalties can be applied to `context` (the repetition
// penalty's) and `generated` (the additive ones') in our loops: each is off,
// or every id is in [0, vocab) (else the penalty's gather fails: the libtorch
// ops report it).
bool PenaltiesApply(const SamplingParams& p, const std::vector<int64_t>& context, const std::vector<int64_t>& generated,
                    int64_t vocab) {
  auto in_vocab = [vocab](const std::vector<int64_t>& ids) {
    return std::all_of(ids.begin(), ids.end(), [vocab](int64_t id) { return id >= 0 && id < vocab; });
  };
  return (p.repetition_penalty == 1.0 || in_vocab(context)) && (!p.AdditivePenalties() || in_vocab(generated));
}

// The additive penalties of one row: each distinct id of `generated` (in
// ascending order, into `ids`) with frequency * its count + presence,
// computed in double and rounded to fp32 once (`deltas`), so that our loops
// and the libtorch ops subtract the same fp32 value.
void AdditiveDeltas(const std::vector<int64_t>& generated, double frequency, double presence, std::vector<int64_t>& ids,
                    std::vector<float>& deltas) {
  thread_local std::vector<int64_t> sorted;
  sorted.assign(generated.begin(), generated.end());
  std::sort(sorted.begin(), sorted.end());
  ids.clear();
  deltas.clear();
  for (size_t i = 0; i < sorted.size();) {
    size_t j = i;
    while (j < sorted.size() && sorted[j] == sorted[i]) ++j;
    ids.push_back(sorted[i]);
    deltas.push_back(static_cast<float>(frequency * static_cast<double>(j - i) + presence));
    i = j;
  }
}

// Row `row` [vocab] with the repetition penalty applied unless it is 1 (HF's
// gather, scale, scatter: each id of `context`, all in the vocabulary, once; fp32 products
// and quotients with the penalty cast to fp32, as libtorch's ops with a
// scalar), then the additive penalties over `generated` (AdditiveDeltas,
// fp32 differences) unless both are 0, then divided by `temperature`
// (likewise) unless it is 1, into `out`. Returns whether every score is
// finite.
bool Processed(const float* row, int64_t vocab, const std::vector<int64_t>& context,
               const std::vector<int64_t>& generated, const SamplingParams& params, double temperature,
               std::vector<float>& out) {
  out.assign(row, row + vocab);
  if (params.repetition_penalty != 1.0) {
    const float p = static_cast<float>(params.repetition_penalty);
    for (int64_t id : context) out[id] = row[id] < 0 ? row[id] * p : row[id] / p;
  }
  if (params.AdditivePenalties()) {
    thread_local std::vector<int64_t> ids;
    thread_local std::vector<float> deltas;
    AdditiveDeltas(generated, params.frequency_penalty, params.presence_penalty, ids, deltas);
    for (size_t i = 0; i < ids.size(); ++i) out[ids[i]] -= deltas[i];
  }
  float* x = out.data();
  int64_t i = 0;
  bool finite = true;
#if defined(__SSE2__)
  // 4 at a time (SSE2, every x86-64): the same IEEE quotients; |x| <= max
  // is false for inf and NaN.
  const __m128 t4 = _mm_set1_ps(static_cast<float>(temperature)), max4 = _mm_set1_ps(FLT_MAX);
  const __m128 sign = _mm_set1_ps(-0.0f);
  __m128 ok = _mm_castsi128_ps(_mm_set1_epi32(-1));
  for (; i + 4 <= vocab; i += 4) {
    __m128 v = _mm_loadu_ps(x + i);
    if (temperature != 1.0) {
      v = _mm_div_ps(v, t4);
      _mm_storeu_ps(x + i, v);
    }
    ok = _mm_and_ps(ok, _mm_cmple_ps(_mm_andnot_ps(sign, v), max4));
  }
  finite = _mm_movemask_ps(ok) == 0xF;
#endif
  const float t = static_cast<float>(temperature);
  for (; i < vocab; ++i) {
    if (temperature != 1.0) x[i] /= t;
    finite &= std::isfinite(x[i]);
  }
  return finite;
}

// torch.argmax's choice: the first maximum, NaN counting as the maximum.
// One SSE2 pass keeps each lane's largest value and where it first was (and
// whether there is a NaN); the lanes' first position of the largest wins. (A
// second pass looking for the first position holding the maximum cost ~40 us
// per decode step on a 151,655-id vocabulary.)
int64_t ArgMaxSse2(const float* row, int64_t vocab, bool* any_nan) {
  int64_t i = 0, at = 0;
  float top = -std::numeric_limits<float>::infinity();
  bool nan = false;
#if defined(__SSE2__)
  if (vocab >= 4 && vocab <= std::numeric_limits<int32_t>::max()) {
    __m128 top4 = _mm_set1_ps(top), nan4 = _mm_setzero_ps();
    __m128i at4 = _mm_setzero_si128(), index4 = _mm_setr_epi32(0, 1, 2, 3);
    const __m128i step = _mm_set1_epi32(4);
    for (; i + 4 <= vocab; i += 4, index4 = _mm_add_epi32(index4, step)) {
      const __m128 v = _mm_loadu_ps(row + i);
      const __m128 greater = _mm_cmpgt_ps(v, top4);  // (false for NaN: a lane keeps its first maximum)
      top4 = _mm_or_ps(_mm_and_ps(greater, v), _mm_andnot_ps(greater, top4));
      const __m128i g = _mm_castps_si128(greater);
      at4 = _mm_or_si128(_mm_and_si128(g, index4), _mm_andnot_si128(g, at4));
      nan4 = _mm_or_ps(nan4, _mm_cmpunord_ps(v, v));
    }
    alignas(16) float lanes[4];
    alignas(16) int32_t where[4];
    _mm_store_ps(lanes, top4);
    _mm_store_si128(reinterpret_cast<__m128i*>(where), at4);
    top = std::max(std::max(lanes[0], lanes[1]), std::max(lanes[2], lanes[3]));
    at = vocab;
    for (int l = 0; l < 4; ++l) {
      if (lanes[l] == top) at = std::min<int64_t>(at, where[l]);
    }
    nan = _mm_movemask_ps(nan4) != 0;
  }
#endif
  for (; i < vocab; ++i) {
    nan |= std::isnan(row[i]);
    if (row[i] > top || (i == 0 && !std::isnan(row[i]))) {
      top = row[i];
      at = i;
    }
  }
  *any_nan = nan;
  return at;
}

// Where the CPU runs AVX2 (as FastLinear's kernels, forced alike for tests),
// gemv::ArgMaxAvx2, 8 lanes a compare: greedy Next over 151,655 values, hot,
// 65 -> 15.6 us. NaN present: the first NaN.
int64_t ArgMax(const float* row, int64_t vocab) {
  bool nan = false;
  const int64_t at = ActiveGemvKernel() != GemvKernel::kPortable && gemv::CpuHasAvx2Fma() && vocab >= 1 &&
                             vocab < std::numeric_limits<int32_t>::max() - 32
                         ? gemv::ArgMaxAvx2(row, vocab, &nan)
                         : ArgMaxSse2(row, vocab, &nan);
  if (nan) {
    for (int64_t j = 0; j < vocab; ++j) {
      if (std::isnan(row[j])) return j;
    }
  }
  return at;
}

// The k-th largest of x [n] (ties counted, as torch.topk's values), 0 < k <
// n: the least of LargestIndices' k.
float KthLargest(const float* x, int64_t n, int64_t k) {
  thread_local std::vector<int64_t> at;
  at.resize(static_cast<size_t>(k));
  LargestIndices(x, /*bf16=*/false, n, k, at.data());
  float kth = x[at[0]];
  for (int64_t i : at) kth = std::min(kth, x[i]);
  return kth;
}

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
  if (!(frequency_penalty >= -2 && frequency_penalty <= 2))
    return absl::InvalidArgumentError(absl::StrCat("frequency_penalty must be in [-2, 2], got ", frequency_penalty));
  if (!(presence_penalty >= -2 && presence_penalty <= 2))
    return absl::InvalidArgumentError(absl::StrCat("presence_penalty must be in [-2, 2], got ", presence_penalty));
  return absl::OkStatus();
}

Sampler::Sampler(const SamplingParams& params)
    : params_(params), gen_(at::make_generator<at::CPUGeneratorImpl>(params.seed)) {}

absl::StatusOr<Sampler> Sampler::Create(const SamplingParams& params) {
  if (absl::Status s = params.Validate(); !s.ok()) return s;
  return Sampler(params);
}

at::Tensor Sampler::Process(const at::Tensor& logits, const std::vector<std::vector<int64_t>>& context,
                            const std::vector<std::vector<int64_t>>& generated) const {
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
  if (params_.AdditivePenalties()) {
    // OpenAI's frequency and presence penalties: minus AdditiveDeltas.
    std::vector<int64_t> ids;
    std::vector<float> deltas;
    for (int64_t b = 0; b < scores.size(0) && b < static_cast<int64_t>(generated.size()); ++b) {
      if (generated[b].empty()) continue;
      AdditiveDeltas(generated[b], params_.frequency_penalty, params_.presence_penalty, ids, deltas);
      const at::Tensor at_ids = at::tensor(ids, at::TensorOptions().dtype(at::kLong));
      at::Tensor row = scores.select(0, b);
      row.scatter_(0, at_ids, row.gather(0, at_ids) - at::tensor(deltas, at::TensorOptions().dtype(at::kFloat)));
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

bool Sampler::Candidates(const float* row, int64_t vocab, const std::vector<int64_t>& context, Kept& out,
                         const std::vector<int64_t>& generated) const {
  if (!params_.do_sample || vocab <= 0 || (params_.top_k == 0 && params_.top_p < 1.0) ||
      !PenaltiesApply(params_, context, generated, vocab)) {
    return false;
  }
  // (Buffers of a vocabulary's size kept between calls: fresh ones are
  // fresh pages.)
  thread_local std::vector<float> scores;
  if (!Processed(row, vocab, context, generated, params_, params_.temperature, scores)) return false;
  // Top-k: every score >= the k-th largest stays.
  float kth = -std::numeric_limits<float>::infinity();
  if (params_.top_k > 0 && params_.top_k < vocab) kth = KthLargest(scores.data(), vocab, params_.top_k);
  out.ids.clear();
  out.scores.clear();
  for (int64_t i = 0; i < vocab; ++i) {
    if (scores[i] >= kth) {
      out.ids.push_back(i);
      out.scores.push_back(scores[i]);
    }
  }
  // Their softmax in fp32 (our row kernel where there is one: no libtorch
  // op over a whole vocabulary), into out.probs.
  auto softmax = [&out] {
    out.probs.assign(out.scores.begin(), out.scores.end());
    at::NoGradGuard no_grad;  // (the kernel runs in place outside autograd only)
    const at::Tensor t = at::from_blob(out.probs.data(), {1, static_cast<int64_t>(out.probs.size())}, at::kFloat);
    const at::Tensor p = SoftmaxLastDimFp32(t);
    if (p.data_ptr() != t.data_ptr()) t.copy_(p);
  };
  softmax();
  if (params_.top_p < 1.0) {
    // Top-p: ascending scores (ties by id); the cumulative probability
    // summed in double and compared in fp32 (as torch's cumsum and the
    // comparison with a scalar): the ids at or below 1 - top_p go, the most
    // likely one always stays.
    const size_t n = out.ids.size();
    std::vector<size_t> order(n);
    for (size_t i = 0; i < n; ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
      return out.scores[a] != out.scores[b] ? out.scores[a] < out.scores[b] : a < b;
    });
    const float cut = static_cast<float>(1 - params_.top_p);
    std::vector<bool> removed(n, false);
    double cumulative = 0;
    size_t gone = 0;
    for (size_t j = 0; j + 1 < n; ++j) {
      cumulative += out.probs[order[j]];
      if (static_cast<float>(cumulative) <= cut) removed[order[j]] = true, ++gone;
    }
    if (gone > 0) {
      size_t w = 0;
      for (size_t i = 0; i < n; ++i) {
        if (removed[i]) continue;
        out.ids[w] = out.ids[i];
        out.scores[w++] = out.scores[i];
      }
      out.ids.resize(w);
      out.scores.resize(w);
      softmax();
    }
  }
  return true;
}

absl::StatusOr<std::vector<int64_t>> Sampler::Next(const at::Tensor& logits,
                                                   const std::vector<std::vector<int64_t>>& context,
                                                   const std::vector<std::vector<int64_t>>& generated) {
  if (!logits.defined() || logits.dim() != 2) return absl::InvalidArgumentError("Sampler: logits must be [B, V]");
  const bool cpu_rows =
      logits.scalar_type() == at::kFloat && logits.device().is_cpu() && logits.is_contiguous() && logits.size(1) > 0;
  static const std::vector<int64_t> kNoContext;
  auto context_of = [&](int64_t b) -> const std::vector<int64_t>& {
    return b < static_cast<int64_t>(context.size()) ? context[b] : kNoContext;
  };
  auto generated_of = [&](int64_t b) -> const std::vector<int64_t>& {
    return b < static_cast<int64_t>(generated.size()) ? generated[b] : kNoContext;
  };
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  bool penalty_applies = true;
  for (int64_t b = 0; b < rows && !params_.do_sample; ++b) {
    penalty_applies &= PenaltiesApply(params_, context_of(b), generated_of(b), vocab);
  }
  if (cpu_rows && penalty_applies && !params_.do_sample) {
    // Greedy: argmax of each row on this thread, as it is (no copy) or after
    // the penalty (non-finite scores included, as argmax takes them).
    std::vector<int64_t> ids(rows, 0);
    thread_local std::vector<float> scores;  // (reused: see Candidates)
    for (int64_t b = 0; b < rows; ++b) {
      const float* row = logits.data_ptr<float>() + b * vocab;
      if (params_.repetition_penalty != 1.0 || params_.AdditivePenalties()) {
        Processed(row, vocab, context_of(b), generated_of(b), params_, 1.0, scores);
        row = scores.data();
      }
      ids[b] = ArgMax(row, vocab);
    }
    return ids;
  }
  if (cpu_rows && params_.do_sample && (params_.top_k > 0 || params_.top_p == 1.0)) {
    thread_local std::vector<Kept> kept;  // (reused: see Candidates)
    if (static_cast<int64_t>(kept.size()) < rows) kept.resize(rows);
    int64_t ready = 0;
    while (ready < rows && Candidates(logits.data_ptr<float>() + ready * vocab, vocab, context_of(ready), kept[ready],
                                      generated_of(ready))) {
      ++ready;
    }
    if (ready == rows) {
      std::vector<int64_t> ids(rows, 0);
      auto* gen = gen_.get<at::CPUGeneratorImpl>();
      std::lock_guard<std::mutex> lock(gen_.mutex());
      for (int64_t b = 0; b < rows; ++b) {
        const Kept& k = kept[b];
        double total = 0;
        for (float q : k.probs) total += q;
        const double u = static_cast<double>(gen->random64() >> 11) * 0x1.0p-53 * total;  // [0, total)
        // The first id whose cumulative probability passes u (the last
        // possible one where rounding leaves the sum below u).
        double cumulative = 0;
        for (size_t i = 0; i < k.ids.size(); ++i) {
          if (k.probs[i] == 0) continue;
          ids[b] = k.ids[i];
          cumulative += k.probs[i];
          if (u < cumulative) break;
        }
      }
      return ids;
    }
  }
  return TorchGuard("sampling", [&]() -> std::vector<int64_t> {
    at::Tensor scores = Process(logits, context, generated);
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
