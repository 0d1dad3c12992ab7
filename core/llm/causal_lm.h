// The InternVL2 language model half: a decoder-only LLM (Qwen2, InternLM2,
// LLaMA/Yi) built from LlmConfig, loaded from the checkpoint's
// `language_model.*` tensors, run in fp32 or bf16 on CPU with libtorch.
//
// Two ways to run it: Forward, a full pass over given tokens (training,
// reference logits; differentiable), and ForwardPaged, one batched step of
// the serving engine over the paged KV pool (core/engine/llm_engine.h runs
// the generation loop on it).
//
// Every public entry point returns absl::Status(Or); libtorch exceptions are
// caught here (TorchGuard). Forward is differentiable under grad mode (the
// trainer's path); inference callers hold at::InferenceMode.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "core/config.h"
#include "core/llm/modules.h"
#include "core/llm/paged_kv.h"
#include "core/safetensors.h"

namespace internvl::llm {

// Rotary position embedding as the reference implements it (HF rotate_half
// convention: cos/sin over the concatenated halves [freqs, freqs]):
// inv_freq = 1 / base^(arange(0, d, 2) / d) in fp32, angle = position * inv_freq
// in fp32 (linear scaling divides the position by the factor first).
//
// Dynamic NTK scaling (InternLM2DynamicNTKScalingRotaryEmbedding,
// LlamaDynamicNTKScalingRotaryEmbedding in transformers 4.37) is STATEFUL in
// the reference: the module caches tables for max_seq_len_cached positions
// (initially max_position_embeddings); a forward whose kv length exceeds it
// rebuilds them, and when that length is past max_position_embeddings it
// enlarges the base to base * (f*len/max - (f-1))^(d/(d-2)) and keeps the new
// inv_freq for every later call, short ones included, until a yet longer one
// rebuilds it again. Keys already cached keep their old rotation. This class
// reproduces that, including the persistence across sequences.
class RotaryEmbedding {
 public:
  // Tables are computed on `device` (the model's).
  explicit RotaryEmbedding(const LlmConfig& c, c10::Device device = c10::Device(c10::kCPU));
  // Notes that a forward pass attends over `kv_len` positions (the reference
  // calls rotary_emb(seq_len=kv_len) in every layer; all layers agree).
  void Observe(int64_t kv_len);
  // cos, sin [B, T, 1, head_dim] in `dtype` for int64 positions [B, T], on
  // the rotary state's device (positions may be anywhere).
  std::pair<at::Tensor, at::Tensor> Tables(const at::Tensor& positions, at::ScalarType dtype) const;
  // The same for positions [1, N] given on the host. On the CPU, for a few
  // positions (decoding), the rows are copied from blocks of 256 positions
  // computed once per process by the ops above (the ops are elementwise:
  // the same bits; not once dynamic scaling has moved the base): the 8 ops
  // cost ~60-110 us per decode step, cold after the step's weights.
  std::pair<at::Tensor, at::Tensor> Tables(const std::vector<int64_t>& positions, at::ScalarType dtype) const;
  // Current inverse frequencies (fp32 [head_dim/2]) and effective base.
  const at::Tensor& inv_freq() const { return inv_freq_; }
  double base() const { return base_; }

 private:
  at::Tensor InvFreq(double base) const;
  int64_t dim_;
  int64_t max_pos_;
  double theta_;
  std::string scaling_type_;  // "", "linear" or "dynamic"
  double factor_ = 1.0;
  int64_t cached_len_;
  double base_;
  c10::Device device_;
  at::Tensor inv_freq_;
};

enum class LogitsMode {
  kLast,  // logits of the last position only, [B, V] (the lm_head runs on B rows)
  kAll,   // [B, T, V], every one through the head's own weights (no rescored 4-bit pass)
  kNone,  // no head: final-normed hidden states [B, T, H]
};

struct ForwardOptions {
  // [B, T] 0/1 (any integer or bool dtype) for the NEW tokens; 0 = padding
  // (batch_chat pads on the LEFT). Undefined = all real. Position ids follow
  // HF generate: cumsum(mask over all tokens so far) - 1, pads set to 1.
  at::Tensor attention_mask;
  LogitsMode logits = LogitsMode::kLast;
};

// Storage and compute dtypes of a CausalLM. `weights` is the dtype of the
// matrices (projections, embedding table, vocabulary head): what decoding
// reads per token. `compute` is that of everything else: activations, KV
// cache, norms and biases. Weights narrower than the compute dtype (bf16 in
// fp32) are widened exactly as they are used.
struct Precision {
  at::ScalarType compute = at::kFloat;
  at::ScalarType weights = at::kFloat;
  // The matrices quantized at load time (quant.h); an AWQ checkpoint's
  // layers are 4-bit whatever this says, the rest (its vocabulary head)
  // follows it.
  Quantization quantize = Quantization::kNone;
  // Where the layers are quantized (--quantize int8 or int4, an AWQ
  // checkpoint), the vocabulary head's decode product runs through a 4-bit
  // copy of it and then recomputes each row's this many largest logits
  // through the head's own weights (RescoredLinear, quant.h): int8 under
  // --quantize int4 or int8, else the checkpoint's dtype (an AWQ
  // checkpoint's head). 0: the head in one pass (int8 or 4-bit as
  // --quantize says).
  int64_t head_candidates = 64;
  // Where the weights, activations and KV pool live (device.h). Quantized
  // matrices run on the CPU only; an AWQ checkpoint on another device is
  // widened to `weights` at load time.
  c10::Device device = c10::Device(c10::kCPU);

  // One dtype for both (what Load(config, store, dtype) uses).
  static Precision Uniform(at::ScalarType dtype) { return {dtype, dtype}; }
  // What a request for `requested` ("--dtype bf16") runs as on this CPU:
  // weights rounded to `requested`, computed in EffectiveComputeDType
  // (torch_util.h): bf16 weights computed in fp32 without native bf16
  // matmuls, like the vision model.
  static Precision ForRequested(at::ScalarType requested, c10::Device device = c10::Device(c10::kCPU));
};

class CausalLM {
 public:
  // Builds the model of `config` and loads `prefix`+HF names from `store`,
  // converted to `dtype` (kFloat or kBFloat16). Missing, unexpected or
  // mis-shaped tensors are INVALID_ARGUMENT listing the keys.
  static absl::StatusOr<std::unique_ptr<CausalLM>> Load(const LlmConfig& config, const TensorStore& store,
                                                        at::ScalarType dtype,
                                                        const std::string& prefix = "language_model.");
  // The same with weights stored in `precision.weights` and computed in
  // `precision.compute` (both kFloat or kBFloat16).
  static absl::StatusOr<std::unique_ptr<CausalLM>> Load(const LlmConfig& config, const TensorStore& store,
                                                        const Precision& precision,
                                                        const std::string& prefix = "language_model.");
  // Random N(0, std) weights (norm weights 1, biases 0), for benchmarks and
  // tests that need a model of a given shape without a checkpoint.
  static absl::StatusOr<std::unique_ptr<CausalLM>> CreateRandom(const LlmConfig& config, at::ScalarType dtype,
                                                                uint64_t seed, double stddev = 0.02);
  static absl::StatusOr<std::unique_ptr<CausalLM>> CreateRandom(const LlmConfig& config, const Precision& precision,
                                                                uint64_t seed, double stddev = 0.02);

  const LlmConfig& config() const { return config_; }
  // The compute dtype (activations, KV cache, logits before the fp32 cast).
  at::ScalarType dtype() const { return dtype_; }
  // Where the weights, activations and KV pool live; every tensor a call
  // returns is on it (inputs may be on the CPU: they are copied over).
  const c10::Device& device() const { return device_; }
  // The storage dtype of the weight matrices (== dtype() unless loaded with
  // a mixed Precision).
  at::ScalarType weight_dtype() const { return weight_dtype_; }
  // Parameter count and bytes (each stored once; fused views not double counted).
  int64_t num_parameters() const;
  int64_t parameter_bytes() const;
  // Bytes of weights one decode step reads: every parameter except the
  // embedding table (one row of it is gathered), i.e. the memory traffic that
  // bounds batch-1 decoding besides the KV cache. Quantized matrices count
  // their packed bytes.
  int64_t decode_weight_bytes() const;
  // "bf16", "int8", "int4 (AWQ g128) + bf16 head", ...: how the matrices are stored.
  std::string weight_format() const;

  // Token embeddings: int64 ids [B, T] -> [B, T, H] in the compute dtype.
  // OUT_OF_RANGE-like INTERNAL error for ids outside the vocabulary.
  absl::StatusOr<at::Tensor> Embed(const at::Tensor& ids) const;

  // Runs the decoder on `inputs_embeds` [B, T, H] (any float dtype; cast to
  // the compute dtype): a full forward (use_cache=False), causal, with
  // options.attention_mask's left padding. Returns fp32 logits (see
  // LogitsMode; HF casts logits to float) or hidden states. INVALID_ARGUMENT
  // on shape mismatches. Not thread-safe (the model's own dynamic-NTK rope
  // state, which persists across calls as in the reference process).
  absl::StatusOr<at::Tensor> Forward(const at::Tensor& inputs_embeds, const ForwardOptions& options = {});

  // MiniMonkey's SCM scores (MINIMONKEY.md section 4): runs decoder layers
  // [0, layer) over `inputs_embeds` [1, L, H] (positions 0..L-1, causal, a
  // fresh rotary state) and returns layer `layer`'s post-softmax attention
  // probabilities for key columns [key_begin, key_end), averaged over query
  // rows [query_begin, L) and then over heads: fp32 [key_end - key_begin].
  // Scores and softmax in fp32 whatever the compute dtype, sums in double,
  // and never an [L, L] matrix (query rows go in chunks). The result is on
  // the CPU. INVALID_ARGUMENT
  // unless 0 <= key_begin < key_end <= query_begin < L and the layer exists.
  // Thread-safe with the serving engine's steps (reads the weights only).
  absl::StatusOr<at::Tensor> AttentionColumnMeans(const at::Tensor& inputs_embeds, int layer, int64_t key_begin,
                                                  int64_t key_end, int64_t query_begin) const;

  // A fresh rotary state for one sequence: the serving engine keeps one per
  // sequence, so dynamic-NTK scaling is per sequence, as in a fresh process.
  RotaryEmbedding NewRotary() const { return RotaryEmbedding(config_, device_); }

  // A paged KV pool of `num_blocks` blocks in this model's shapes, its
  // elements in `kv_dtype` (default: the compute dtype). A bf16 pool under
  // fp32 compute stores each K/V rounded to bf16 (as the official bf16 model
  // keeps them), half the bytes per position; attention still computes in
  // fp32.
  absl::StatusOr<std::unique_ptr<PagedKVPool>> NewPagedPool(
      int64_t num_blocks, int block_size, std::optional<at::ScalarType> kv_dtype = std::nullopt) const;
  // Whether this model attends over a KV cache of `dtype`: its compute dtype,
  // or bf16 under fp32 compute.
  bool ServesKvDtype(at::ScalarType dtype) const {
    return dtype == dtype_ || (dtype == at::kBFloat16 && dtype_ == at::kFloat);
  }
  // The KV cache dtype of `--kv-cache-dtype auto` (as vLLM's auto, the
  // model's dtype): the weights' dtype, so a bf16 model keeps a bf16 cache
  // as the official bf16 model does, on every CPU (where bf16 weights compute
  // in fp32 too: half the bytes per position, and the same capacity for a
  // budget as on a CPU that computes in bf16); fp32 weights an fp32 cache.
  at::ScalarType DefaultKvDtype() const { return ServesKvDtype(weight_dtype_) ? weight_dtype_ : dtype_; }

  // One batched step of the serving engine. `inputs_embeds` [N, H] holds the
  // fed tokens of every sequence of `seqs`, concatenated in order (their
  // num_new sum to N); `ropes[i]` is sequence i's rotary state, already
  // Observe()d for its length. Writes their K/V into `pool`, attends each
  // sequence causally over its own blocks (tokens of one sequence never see
  // another's), and returns fp32 logits [S, V] of the last fed token of each
  // sequence with `logits` set, in order ([0, V] when none).
  // INVALID_ARGUMENT for inconsistent shapes, block tables or pools.
  // Inference only (call under at::InferenceMode).
  absl::StatusOr<at::Tensor> ForwardPaged(const at::Tensor& inputs_embeds, const std::vector<PagedSeq>& seqs,
                                          const std::vector<const RotaryEmbedding*>& ropes, PagedKVPool& pool);

  // The torch module tree (parameters under HF names without the
  // "language_model." prefix), for training and checkpoint writing.
  LanguageModel& module() { return module_; }
  const RotaryEmbedding& rotary() const { return rope_; }

 private:
  CausalLM(const LlmConfig& config, const Precision& precision);
  absl::Status Validate() const;
  // Embed's rows copied from the table (widened from bf16 where the compute
  // dtype is fp32) on the CPU outside autograd, the ids in range; undefined
  // otherwise (the op then runs). A decode step's one row: the op chain was
  // 4 libtorch calls, ~120 us in a decode step (each call cold after the
  // step's weights have streamed through the caches).
  at::Tensor EmbedRowsOnCpu(const at::Tensor& ids) const;
  // Casts norms and biases to the compute dtype, then fuses and quantizes
  // (after loading).
  void Finish();
  // Reads the AWQ layers of `store` into their Dense modules; returns the
  // names of the parameters they replace (not loaded as floats).
  absl::StatusOr<std::vector<std::string>> LoadAwq(const TensorStore& store, const std::string& prefix,
                                                   std::vector<std::string>* awq_keys);

  LlmConfig config_;
  at::ScalarType dtype_;
  at::ScalarType weight_dtype_;
  Quantization quantize_;
  int64_t head_candidates_;
  c10::Device device_;
  LanguageModel module_{nullptr};
  RotaryEmbedding rope_;
  std::mutex rope_mu_;
};

// Replaces, in order, the rows of `text_embeds` [B, T, H] whose `input_ids`
// [B, T] equal `img_context_id` by the rows of `vit_embeds` [N, P, H]
// (flattened to [N*P, H], cast to text_embeds' dtype) — InternVLChatModel's
// `input_embeds[selected] = vit_embeds.reshape(-1, C)` over the flattened
// batch. A count mismatch (N*P != number of <IMG_CONTEXT> tokens) or a hidden
// size mismatch is INVALID_ARGUMENT, never a silent truncation. Out of place
// and differentiable (the trainer back-propagates into mlp1).
absl::StatusOr<at::Tensor> ScatterImageEmbeddings(const at::Tensor& text_embeds, const at::Tensor& input_ids,
                                                  int64_t img_context_id, const at::Tensor& vit_embeds);

}  // namespace internvl::llm
