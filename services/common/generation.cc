#include "services/common/generation.h"

#include <cmath>
#include <random>

#include "absl/strings/str_cat.h"
#include "core/tokenizer/stop_strings.h"

namespace internvl::services {

absl::StatusOr<GenerationSettings> FromProto(const v1::GenerationSettings& p, int max_new_tokens_limit) {
  GenerationSettings g;
  if (p.has_max_new_tokens()) g.max_new_tokens = p.max_new_tokens();
  if (p.has_do_sample()) g.do_sample = p.do_sample();
  if (p.has_temperature()) g.temperature = p.temperature();
  if (p.has_top_p()) g.top_p = p.top_p();
  if (p.has_top_k()) g.top_k = p.top_k();
  if (p.has_repetition_penalty()) g.repetition_penalty = p.repetition_penalty();
  if (p.has_frequency_penalty()) g.frequency_penalty = p.frequency_penalty();
  if (p.has_presence_penalty()) g.presence_penalty = p.presence_penalty();
  g.stop.assign(p.stop().begin(), p.stop().end());
  if (absl::Status s = tokenizer::ValidateStopStrings(g.stop); !s.ok())
    return absl::InvalidArgumentError(absl::StrCat("generation.stop: ", s.message()));
  if (p.has_seed()) {
    g.seed = p.seed();
  } else {
    g.seed = std::random_device{}() | (uint64_t{std::random_device{}()} << 32);
  }
  if (g.max_new_tokens < 1)
    return absl::InvalidArgumentError(absl::StrCat("generation.max_new_tokens must be >= 1, got ", g.max_new_tokens));
  if (g.max_new_tokens > max_new_tokens_limit)
    return absl::ResourceExhaustedError(absl::StrCat("generation.max_new_tokens ", g.max_new_tokens,
                                                     " is over the server's limit of ", max_new_tokens_limit));
  if (!std::isfinite(g.temperature) || g.temperature <= 0)
    return absl::InvalidArgumentError(absl::StrCat("generation.temperature must be > 0, got ", g.temperature));
  if (!std::isfinite(g.top_p) || g.top_p <= 0 || g.top_p > 1)
    return absl::InvalidArgumentError(absl::StrCat("generation.top_p must be in (0, 1], got ", g.top_p));
  if (g.top_k < 0) return absl::InvalidArgumentError(absl::StrCat("generation.top_k must be >= 0, got ", g.top_k));
  if (!std::isfinite(g.repetition_penalty) || g.repetition_penalty <= 0)
    return absl::InvalidArgumentError(
        absl::StrCat("generation.repetition_penalty must be > 0, got ", g.repetition_penalty));
  for (auto [name, value] :
       {std::pair{"frequency_penalty", g.frequency_penalty}, {"presence_penalty", g.presence_penalty}})
    if (!(value >= -2 && value <= 2))
      return absl::InvalidArgumentError(absl::StrCat("generation.", name, " must be in [-2, 2], got ", value));
  return g;
}

v1::GenerationSettings ToProto(const GenerationSettings& g) {
  v1::GenerationSettings p;
  p.set_max_new_tokens(g.max_new_tokens);
  p.set_do_sample(g.do_sample);
  p.set_temperature(static_cast<float>(g.temperature));
  p.set_top_p(static_cast<float>(g.top_p));
  p.set_top_k(g.top_k);
  p.set_repetition_penalty(static_cast<float>(g.repetition_penalty));
  p.set_frequency_penalty(static_cast<float>(g.frequency_penalty));
  p.set_presence_penalty(static_cast<float>(g.presence_penalty));
  p.set_seed(g.seed);
  for (const std::string& s : g.stop) p.add_stop(s);
  return p;
}

v1::FinishReason ToProto(FinishReason reason) {
  switch (reason) {
    case FinishReason::kStop:
      return v1::FINISH_REASON_STOP;
    case FinishReason::kLength:
      return v1::FINISH_REASON_LENGTH;
    case FinishReason::kCancelled:
      return v1::FINISH_REASON_CANCELLED;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}

FinishReason FromProto(v1::FinishReason reason) {
  switch (reason) {
    case v1::FINISH_REASON_STOP:
      return FinishReason::kStop;
    case v1::FINISH_REASON_LENGTH:
      return FinishReason::kLength;
    default:
      return FinishReason::kCancelled;
  }
}

v1::ScmSummary ToProto(const ScmOutcome& scm) {
  v1::ScmSummary p;
  p.set_first_image_token(scm.first_image_token);
  p.set_high_tokens(scm.high_tokens);
  p.set_length_before(scm.length_before);
  p.set_length_after(scm.length_after);
  return p;
}

ScmOutcome FromProto(const v1::ScmSummary& p) {
  ScmOutcome scm;
  scm.applied = p.high_tokens() > 0;
  scm.first_image_token = p.first_image_token();
  scm.high_tokens = p.high_tokens();
  scm.length_before = p.length_before();
  scm.length_after = p.length_after();
  return scm;
}

}  // namespace internvl::services
