// The language-model half of the serving engine (DESIGN.md section 6): one
// model, many concurrent generations, continuous (iteration-level) batching.
//
// Requests (prompt ids + image-embedding rows + settings) are submitted from
// any thread and queued; one step thread runs the engine:
//   1. cancelled or expired sequences leave (their KV blocks are freed);
//   2. the scheduler (scheduler.h) picks this step's work: one token for every
//      decoding sequence, prompt chunks within the per-step token budget,
//      newcomers while KV blocks last, preemptions when they run out;
//   3. the executor runs it as ONE batched forward (CausalLM::ForwardPaged:
//      every weight matrix read once for the whole batch) over the paged KV
//      pool, and samples each sequence with its own settings and random
//      generator (so its tokens do not depend on its neighbours);
//   4. new tokens go to each request's callback; finished requests complete.
// Full KV blocks are content-addressed (token ids + a digest of the image
// rows they hold), so a conversation that resends its history and images, or
// requests sharing a system prompt or an image, reuse the cached prefix and
// prefill only what is new.
//
// The KV pool is sized once from a byte budget; a request that could never
// fit is refused at Submit (RESOURCE_EXHAUSTED), one that must wait for
// blocks waits in a bounded queue, and a running one that runs out is
// preempted and later recomputed (never a crash, never over the budget).
//
// Torch-free header (pimpl): the services include it cheaply.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/chat/chat_types.h"
#include "core/config.h"
#include "core/host_tensor.h"

namespace internvl {

namespace llm {
class CausalLM;
}

struct LlmEngineOptions {
  std::string dtype = "bf16";  // "fp32" or "bf16" (EffectiveComputeDType applies)
  // "none", "int8" or "int4": the LLM matrices quantized at load time
  // (llm/quant.h); an AWQ checkpoint's layers are 4-bit regardless.
  std::string quantize = "none";
  // Where the layers are quantized: how many of each decode row's largest
  // logits the vocabulary head recomputes through its own weights after its
  // 4-bit pass (llm::Precision::head_candidates); 0: the head in one pass.
  int64_t head_candidates = 64;
  int threads = 0;  // intra-op threads; 0 = all cores
  // "cpu", "cuda" or "cuda:N" (core/nn/device.h): where the weights, the KV
  // pool and the activations live. Quantization is CPU-only.
  std::string device = "cpu";
  // KV pool budget in bytes; 0 = kv_cache_fraction of the memory limit
  // (physical memory, or the container's cgroup limit when lower; on a GPU
  // its memory, and at most 90% of what is free once the weights are in).
  int64_t kv_cache_bytes = 0;
  double kv_cache_fraction = 0.25;
  // "auto" (the weights' dtype: CausalLM::DefaultKvDtype), "bf16" or "fp32".
  // A bf16 cache under fp32 compute (bf16 weights on a CPU without native
  // bf16 matmuls) stores K/V rounded to bf16 as the official bf16 model
  // keeps them: half the bytes per position, so twice the cached positions
  // for a budget and less to read per decode step; attention still computes
  // in fp32. "fp32" keeps them exact where the model computes in fp32.
  std::string kv_cache_dtype = "auto";
  int block_size = 16;               // positions per KV block (the prefix-reuse granularity)
  int max_num_seqs = 32;             // sequences decoding together at most
  int64_t max_batched_tokens = 512;  // tokens per step: decodes + prefill chunks
  int64_t max_waiting = 64;          // queued requests before RESOURCE_EXHAUSTED
  bool prefix_caching = true;

  // INVALID_ARGUMENT naming the field for values that cannot work.
  absl::Status Validate() const;
};

// INVALID_ARGUMENT for settings HF rejects: max_new_tokens < 1, temperature
// <= 0, top_p outside (0, 1], top_k < 0, repetition_penalty <= 0; and
// frequency or presence penalties outside [-2, 2] (OpenAI's range). The one
// validator of generation settings (CLI, services and engine use it).
absl::Status ValidateGenerationSettings(const GenerationSettings& settings);

struct EngineRequest {
  std::string request_id;  // for logs
  std::vector<int64_t> prompt_ids;
  // The image rows in prompt order, [rows, H] or [n, T, H] in F32/BF16/F16
  // (cast to the model's dtype); rows must equal the count of
  // `img_context_id` in prompt_ids. Empty for a text-only prompt.
  HostTensor image_embeddings;
  int64_t img_context_id = -1;
  // Generation stops after one of these ids (kept in the output).
  std::vector<int64_t> stop_ids;
  GenerationSettings settings;
  // Past it, the request ends with DEADLINE_EXCEEDED (checked every step).
  absl::Time deadline = absl::InfiniteFuture();
  // > 0: MiniMonkey's Scale Compression Mechanism with this block of H
  // visual tokens (MINIMONKEY.md section 4), run in Submit on the caller's
  // thread: layers 0-1 over the whole prompt, the top H/2 of [s, s + H) by
  // layer-1 attention kept (s = the first <IMG_CONTEXT>), s + H dropped,
  // then the shorter prompt is generated from as usual (positions 0..L'-1).
  // INVALID_ARGUMENT without an image or when s + H is past the prompt.
  int64_t scm_high_tokens = 0;
  // Called on the engine's step thread with each id as soon as it is chosen
  // (the stop id included); returning false cancels. Must not block.
  std::function<bool(int token_id)> on_token;
};

struct EngineResult {
  std::vector<int> token_ids;  // generated ids (the stop id included when produced)
  FinishReason finish_reason = FinishReason::kLength;
  int prompt_tokens = 0;
  int cached_prompt_tokens = 0;  // whose K/V came from the prefix cache
  int preemptions = 0;
  double queue_ms = 0;                // submit -> first scheduled
  double prefill_ms = 0;              // first scheduled -> first token
  double decode_ms = 0;               // first token -> last token
  double time_to_first_token_ms = 0;  // submit -> first token
  ScmOutcome scm;                     // scm_high_tokens > 0 only
};

// A submitted generation.
class GenerationHandle {
 public:
  virtual ~GenerationHandle() = default;
  // Stops it at the next step (its result: FinishReason::kCancelled). Any thread.
  virtual void Cancel() = 0;
  // Blocks until it ends. Errors: DEADLINE_EXCEEDED, UNAVAILABLE (engine
  // shut down), INTERNAL (a failed step).
  virtual absl::StatusOr<EngineResult> Wait() = 0;
};

// Called once on the step thread when a generation ends.
using EngineDoneCallback = std::function<void(const absl::StatusOr<EngineResult>&)>;

// What one step did, for metrics (reported on the step thread).
struct EngineStepReport {
  int64_t running = 0;
  int64_t waiting = 0;
  int64_t batch_sequences = 0;  // sequences in this step
  int64_t batch_tokens = 0;     // tokens fed in this step
  int64_t kv_blocks_used = 0;
  int64_t kv_blocks_free = 0;  // free + cached-unreferenced (allocatable)
  int64_t kv_blocks_total = 0;
  int64_t preemptions = 0;                    // in this step
  int64_t prefix_query_tokens = 0;            // admitted this step: tokens to prefill
  int64_t prefix_hit_tokens = 0;              // of those, served from the prefix cache
  std::vector<double> time_to_first_token_s;  // sequences that got their first token
  std::vector<double> inter_token_s;          // gaps before the other new tokens
  double step_seconds = 0;
};

class EngineObserver {
 public:
  virtual ~EngineObserver() = default;
  virtual void OnStep(const EngineStepReport& report) = 0;
};

struct EngineStats {
  int64_t running = 0;
  int64_t waiting = 0;
  int64_t kv_blocks_used = 0;
  int64_t kv_blocks_total = 0;
  int64_t kv_capacity_tokens = 0;
  int64_t prefix_query_tokens = 0;
  int64_t prefix_hit_tokens = 0;
  int64_t preemptions = 0;
  int64_t steps = 0;
};

class LlmEngine {
 public:
  // Loads the `language_model.*` weights of the (resolved) model folder and
  // starts the step thread.
  static absl::StatusOr<std::unique_ptr<LlmEngine>> Load(const std::string& model_dir, const InternVLConfig& config,
                                                         const LlmEngineOptions& options);
  // Requests still queued or running end with UNAVAILABLE.
  ~LlmEngine();

  // Queues one generation. Checks before queueing (on the caller's thread):
  // settings (INVALID_ARGUMENT), prompt ids in the vocabulary, image rows vs
  // <IMG_CONTEXT> count and hidden size (INVALID_ARGUMENT), fits the KV pool
  // and the queue has room (RESOURCE_EXHAUSTED). `on_done` (optional) runs
  // once when it ends.
  absl::StatusOr<std::shared_ptr<GenerationHandle>> Submit(EngineRequest request, EngineDoneCallback on_done = nullptr);
  // Submit + Wait.
  absl::StatusOr<EngineResult> Generate(EngineRequest request);

  // Receives a report after every step (null: none). Set before serving.
  void SetObserver(EngineObserver* observer);
  EngineStats stats() const;

  int64_t hidden_size() const;
  int64_t vocab_size() const;
  // "fp32" / "bf16": the dtype actually computed in.
  std::string dtype_name() const;
  // The KV cache's element type: "bf16" or "fp32".
  std::string kv_cache_dtype_name() const;
  // "cpu", "cuda:0", ...
  std::string device_name() const;
  const LlmEngineOptions& options() const;

  struct Impl;

 private:
  friend absl::StatusOr<std::unique_ptr<LlmEngine>> CreateLlmEngine(std::unique_ptr<llm::CausalLM> lm,
                                                                    const LlmEngineOptions& options);
  explicit LlmEngine(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace internvl
