// GenerationSettings (generation.proto) -> core GenerationSettings with the
// documented defaults, and the range checks shared by the gateway and the
// decoder.
#pragma once

#include <cstdint>

#include "absl/status/statusor.h"
#include "core/chat/chat_types.h"
#include "internvl/v1/generation.pb.h"

namespace internvl::services {

// Unset fields take the proto's defaults (max_new_tokens 1024, greedy,
// temperature 1, top_p 1, top_k 50, repetition_penalty 1); an unset seed
// becomes a random one. INVALID_ARGUMENT (naming the field and the value) for
// max_new_tokens < 1, temperature <= 0, top_p outside (0, 1], top_k < 0,
// repetition_penalty <= 0, frequency or presence penalties outside [-2, 2],
// or non-finite values; RESOURCE_EXHAUSTED for
// max_new_tokens above `max_new_tokens_limit`.
absl::StatusOr<GenerationSettings> FromProto(const v1::GenerationSettings& proto, int max_new_tokens_limit);

// The reverse (every field set), for the client and the gateway's upstream call.
v1::GenerationSettings ToProto(const GenerationSettings& settings);

// FinishReason <-> its proto enum (UNSPECIFIED reads as cancelled).
v1::FinishReason ToProto(FinishReason reason);
FinishReason FromProto(v1::FinishReason reason);

// ScmOutcome <-> ScmSummary (the kept offsets stay server-side).
v1::ScmSummary ToProto(const ScmOutcome& scm);
ScmOutcome FromProto(const v1::ScmSummary& scm);

}  // namespace internvl::services
