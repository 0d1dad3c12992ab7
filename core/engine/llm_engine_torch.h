// LlmEngine over an already built model, for benchmarks and tests that make
// one with CausalLM::CreateRandom (includes ATen: keep out of services).
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "core/engine/llm_engine.h"
#include "core/llm/causal_lm.h"

namespace internvl {

// Sizes the KV pool for `lm` from `options` and starts the step thread.
absl::StatusOr<std::unique_ptr<LlmEngine>> CreateLlmEngine(std::unique_ptr<llm::CausalLM> lm,
                                                           const LlmEngineOptions& options);

}  // namespace internvl
