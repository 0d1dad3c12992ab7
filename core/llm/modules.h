// torch::nn modules of the decoder-only LLMs InternVL2 uses, one module per
// reference class, with submodules registered under the checkpoint's key names
// so that LoadModuleWeights(module, store, "language_model.", dtype) is a name
// lookup (STYLE.md rule 1):
//
//   Qwen2ForCausalLM / LlamaForCausalLM (transformers 4.37 modeling_qwen2.py /
//   modeling_llama.py):  model.embed_tokens, model.layers.N.self_attn.{q,k,v,o}_proj,
//   model.layers.N.mlp.{gate,up,down}_proj, model.layers.N.{input,post_attention}_layernorm,
//   model.norm, lm_head.
//   InternLM2ForCausalLM (InternVL internvl_chat/internvl/model/internlm2/modeling_internlm2.py):
//   model.tok_embeddings, model.layers.N.attention.{wqkv,wo}, model.layers.N.feed_forward.{w1,w2,w3},
//   model.layers.N.{attention_norm,ffn_norm}, model.norm, output.
//
// Forward passes stay differentiable when grad mode is on (the trainer runs
// them under autograd). With grad mode off (at::InferenceMode / NoGradGuard)
// they take inference-only shortcuts: fused q|k|v and gate|up matmuls through
// weights that share storage with the per-key parameters, in-place scaling and
// masking, and FastLinear (gemv.h) for the few-row products of decoding. Most users want CausalLM (causal_lm.h), not
// these modules.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/pimpl.h>

#include <memory>
#include <utility>
#include <vector>

#include "core/config.h"
#include "core/llm/quant.h"

namespace internvl::llm {

struct PagedContext;
struct FusedDecodeAccess;  // modules.cc

// HF apply_rotary_pos_emb for one of q / k: x * cos + rotate_half(x) * sin,
// x [B, T, heads, d], cos / sin [B, T, 1, d]. Decoding's few rows in fp32 or
// bf16 run as one loop, bit-identical to the op chain (exposed for tests).
at::Tensor ApplyRope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

// What every layer of one forward pass shares (built once per pass by
// LanguageModelImpl::forward's caller, CausalLM::Forward).
struct LayerContext {
  // Rotary tables for the new tokens, [B, T, 1, head_dim] in the compute
  // dtype (HF casts cos/sin to the activations' dtype).
  at::Tensor cos, sin;
  // bool [B, 1, 1, T, L], true = masked (causal future or padding key);
  // undefined when nothing is masked (a single decode token, no padding).
  at::Tensor masked;
  // Batched serving step over the paged KV pool (paged_attention.h): the
  // [1, N] tokens of several sequences, each attending over its own cached
  // K/V; `masked` is then unused. Null: a full forward over the given tokens
  // (training, reference logits).
  const PagedContext* paged = nullptr;
  // > 0 (a full forward with no padding; `masked` undefined): causal
  // attention computed for this many query rows at a time against the keys
  // up to each chunk's end, so a long pass never holds [T, T] scores.
  int64_t causal_chunk = 0;
};

// y = x W^T + b with W [out, in]. Unlike torch::nn::Linear its parameters are
// created empty in the target dtype (no fp32 random init of billions of
// weights that loading overwrites anyway). forward is Linear (gemv.h): plain
// at::linear under grad mode, the matrix-vector kernels when decoding.
class DenseImpl : public torch::nn::Module {
 public:
  DenseImpl(int64_t in, int64_t out, bool bias, at::ScalarType dtype);
  at::Tensor forward(const at::Tensor& x);
  // forward without the 4-bit pass of `coarse`: every output through the
  // layer's own weights (logits at every position: LogitsMode::kAll).
  at::Tensor ForwardOwn(const at::Tensor& x);
  at::Tensor weight, bias;  // bias undefined when absent
  // Set when the weights are quantized (quant.h): forward then multiplies
  // through it, and `weight` is empty (inference only).
  std::shared_ptr<QuantMatrix> quant;
  // The vocabulary head of a model with 4-bit layers: a 4-bit copy of its
  // weights through which decode rows pass first, their `candidates`
  // largest outputs then recomputed through `quant` or `weight`
  // (RescoredLinear). Null: one pass.
  std::shared_ptr<QuantMatrix> coarse;
  int64_t candidates = 0;
};
TORCH_MODULE(Dense);

// Quantizes `d` as `mode` asks unless it holds quantized weights already
// (AWQ). True when `d` ends up quantized.
bool QuantizeDense(DenseImpl& d, Quantization mode);
// Frees the float weights of quantized Dense layers (after fusing).
void ReleaseQuantizedWeights(const std::vector<DenseImpl*>& dense);

// nn.Embedding without init: weight [vocab, hidden].
class EmbeddingImpl : public torch::nn::Module {
 public:
  EmbeddingImpl(int64_t vocab, int64_t hidden, at::ScalarType dtype);
  at::Tensor forward(const at::Tensor& ids) const;  // [B,T] int64 -> [B,T,H]
  at::Tensor weight;
};
TORCH_MODULE(Embedding);

// LlamaRMSNorm / Qwen2RMSNorm / InternLM2RMSNorm: the statistic is computed in
// fp32, the normalised value cast back to the input dtype before scaling by
// `weight`. [..., H] -> [..., H].
class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t hidden, double eps, at::ScalarType dtype);
  at::Tensor forward(const at::Tensor& x);
  at::Tensor weight;
  double eps;
};
TORCH_MODULE(RMSNorm);

// The residual sums x + y and x += y (returning x): for a decode step's few
// rows the row kernels (gemv_kernels.h; the same bits as libtorch's add),
// else libtorch's ops (add_ only outside autograd).
at::Tensor Add(const at::Tensor& x, const at::Tensor& y);
at::Tensor& AddInPlace(at::Tensor& x, const at::Tensor& y);

// Rows [offsets[i], offsets[i]+rows[i]) of one fused weight become the data of
// each parameter (they share storage), so a single matmul computes several
// projections while the per-key parameters still load, save and train. Returns
// the fused tensor. `parts` must have equal trailing shapes.
at::Tensor FuseRows(const std::vector<at::Tensor*>& parts);
// True when `parts` are still consecutive row blocks of `fused` (a reload or
// an optimizer that replaced .data breaks the sharing: callers then fall back
// to the separate projections).
bool StillFused(const at::Tensor& fused, const std::vector<const at::Tensor*>& parts);

// The fused decode step (DecoderLayerImpl::DecodeInPlace) on or off,
// process-wide: on by default, off where INTERNVL_FUSED_DECODE=0 (or after
// SetFusedDecodeEnabled(false): tests compare the two; the same bits).
void SetFusedDecodeEnabled(bool enabled);
bool FusedDecodeEnabled();
// Layers run by DecodeInPlace in this process so far (tests, benchmarks).
int64_t FusedDecodeLayers();

// Shared decoder-layer interface: [B,T,H] -> [B,T,H].
class DecoderLayerImpl : public torch::nn::Module {
 public:
  virtual at::Tensor forward(const at::Tensor& x, const LayerContext& ctx) = 0;
  // A serving step of decoding sequences only (ctx.paged, one new token
  // each) in one pass over raw buffers: the products, norms, RoPE, KV writes,
  // attention, SwiGLU and residual sums chained with no libtorch op between
  // them. Between two products that stream megabytes of weights every op's
  // dispatch runs from cold caches: after a 64 MB pass an at::empty took
  // 4-5 us and a narrow 9 us (0.3 and 0.6 hot), ~20 of them a layer. The same
  // bits as forward. Where it applies to the rows h [1, N, H]
  // (FusedDecodeEnabled, bf16 or fp32 activations, the project's AVX2
  // kernels, FastLinear or quantized products) it replaces h by the layer's
  // output and returns true; h is copied first unless `h_owned` (h is the
  // pass's own contiguous tensor). Elsewhere false, h untouched.
  virtual bool DecodeInPlace(at::Tensor& h, const LayerContext& ctx, bool h_owned) { return false; }
  // Builds the inference-only fused weights (call after loading weights).
  virtual void Fuse() = 0;
  // Quantizes the layer's matrices as `mode` asks (those already quantized,
  // from an AWQ checkpoint, stay as they are), fuses the quantized q|k|v and
  // gate|up products and frees the float weights they replace. Inference only.
  virtual void Quantize(Quantization mode) = 0;
  // The layer's attention queries [B,T,H,d] and keys [B,T,KV,d] for input
  // `x` (its input norm, projections and RoPE from ctx): what its attention
  // probabilities are made of (MiniMonkey's SCM scores layer 1's).
  virtual std::pair<at::Tensor, at::Tensor> QueryKey(const at::Tensor& x, const LayerContext& ctx) = 0;
  int layer_index = 0;
};

// Qwen2Attention / LlamaAttention: q/k/v/o projections (Qwen2: q/k/v biases,
// no o bias; LLaMA: attention_bias on all four), GQA, HF rotate_half RoPE.
class LlamaAttentionImpl : public torch::nn::Module {
 public:
  explicit LlamaAttentionImpl(const LlmConfig& c, at::ScalarType dtype);
  at::Tensor forward(const at::Tensor& x, const LayerContext& ctx, int layer);
  std::pair<at::Tensor, at::Tensor> QueryKey(const at::Tensor& x, const LayerContext& ctx);
  void Fuse();
  void Quantize(Quantization mode);
  Dense q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};

 private:
  friend struct FusedDecodeAccess;  // LlamaDecoderLayerImpl::DecodeInPlace
  int64_t heads_, kv_heads_, head_dim_;
  at::Tensor qkv_w_, qkv_b_;  // fused views (inference)
  std::shared_ptr<QuantMatrix> qkv_q_;
};
TORCH_MODULE(LlamaAttention);

// LlamaMLP / Qwen2MLP: down(silu(gate(x)) * up(x)).
class LlamaMLPImpl : public torch::nn::Module {
 public:
  explicit LlamaMLPImpl(const LlmConfig& c, at::ScalarType dtype);
  at::Tensor forward(const at::Tensor& x);
  void Fuse();
  void Quantize(Quantization mode);
  Dense gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};

 private:
  friend struct FusedDecodeAccess;  // LlamaDecoderLayerImpl::DecodeInPlace
  at::Tensor gate_up_w_;
  std::shared_ptr<QuantMatrix> gate_up_q_;
};
TORCH_MODULE(LlamaMLP);

// LlamaDecoderLayer / Qwen2DecoderLayer (pre-norm residual blocks).
class LlamaDecoderLayerImpl : public DecoderLayerImpl {
 public:
  LlamaDecoderLayerImpl(const LlmConfig& c, at::ScalarType dtype);
  at::Tensor forward(const at::Tensor& x, const LayerContext& ctx) override;
  void Fuse() override;
  void Quantize(Quantization mode) override;
  std::pair<at::Tensor, at::Tensor> QueryKey(const at::Tensor& x, const LayerContext& ctx) override;
  bool DecodeInPlace(at::Tensor& h, const LayerContext& ctx, bool h_owned) override;
  LlamaAttention self_attn{nullptr};
  LlamaMLP mlp{nullptr};
  RMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
};

// InternLM2Attention: one `wqkv` whose output rows are grouped per kv head:
// for kv head j, its G = heads/kv_heads query heads, then its key head, then
// its value head ('b q (h gs d)' with gs = G + 2 in the reference's rearrange),
// NOT [all q | all k | all v]. Query head j*G+g uses kv head j, which is what
// repeat_kv pairs it with.
class InternLM2AttentionImpl : public torch::nn::Module {
 public:
  explicit InternLM2AttentionImpl(const LlmConfig& c, at::ScalarType dtype);
  at::Tensor forward(const at::Tensor& x, const LayerContext& ctx, int layer);
  std::pair<at::Tensor, at::Tensor> QueryKey(const at::Tensor& x, const LayerContext& ctx);
  Dense wqkv{nullptr}, wo{nullptr};

 private:
  friend struct FusedDecodeAccess;  // InternLM2DecoderLayerImpl::DecodeInPlace
  int64_t heads_, kv_heads_, head_dim_;
};
TORCH_MODULE(InternLM2Attention);

// InternLM2MLP: w2(silu(w1(x)) * w3(x)).
class InternLM2MLPImpl : public torch::nn::Module {
 public:
  explicit InternLM2MLPImpl(const LlmConfig& c, at::ScalarType dtype);
  at::Tensor forward(const at::Tensor& x);
  void Fuse();
  void Quantize(Quantization mode);
  Dense w1{nullptr}, w3{nullptr}, w2{nullptr};

 private:
  friend struct FusedDecodeAccess;  // InternLM2DecoderLayerImpl::DecodeInPlace
  at::Tensor w13_;
  std::shared_ptr<QuantMatrix> w13_q_;
};
TORCH_MODULE(InternLM2MLP);

// InternLM2DecoderLayer.
class InternLM2DecoderLayerImpl : public DecoderLayerImpl {
 public:
  InternLM2DecoderLayerImpl(const LlmConfig& c, at::ScalarType dtype);
  at::Tensor forward(const at::Tensor& x, const LayerContext& ctx) override;
  void Fuse() override;
  void Quantize(Quantization mode) override;
  std::pair<at::Tensor, at::Tensor> QueryKey(const at::Tensor& x, const LayerContext& ctx) override;
  bool DecodeInPlace(at::Tensor& h, const LayerContext& ctx, bool h_owned) override;
  InternLM2Attention attention{nullptr};
  InternLM2MLP feed_forward{nullptr};
  RMSNorm attention_norm{nullptr}, ffn_norm{nullptr};
};

// Qwen2Model / LlamaModel / InternLM2Model: embedding, layers, final norm.
class DecoderModelImpl : public torch::nn::Module {
 public:
  DecoderModelImpl(const LlmConfig& c, at::ScalarType dtype);
  // [B,T,H] input embeddings -> [B,T,H] final-normed hidden states.
  at::Tensor forward(const at::Tensor& inputs_embeds, const LayerContext& ctx);
  Embedding embed{nullptr};  // "embed_tokens" or "tok_embeddings"
  torch::nn::ModuleList layers{nullptr};
  std::vector<std::shared_ptr<DecoderLayerImpl>> typed_layers;
  RMSNorm norm{nullptr};
};
TORCH_MODULE(DecoderModel);

// Qwen2ForCausalLM / LlamaForCausalLM / InternLM2ForCausalLM: `model` plus the
// untied vocabulary head ("lm_head" or "output"; InternVL forces
// tie_word_embeddings = False).
class LanguageModelImpl : public torch::nn::Module {
 public:
  LanguageModelImpl(const LlmConfig& c, at::ScalarType dtype);
  DecoderModel model{nullptr};
  Dense head{nullptr};
};
TORCH_MODULE(LanguageModel);

}  // namespace internvl::llm
