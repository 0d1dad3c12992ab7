#include "core/llm/modules.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "core/llm/bf16_bits.h"
#include "core/llm/chunk_pool.h"
#include "core/llm/gemv.h"
#include "core/llm/gemv_kernels.h"
#include "core/llm/paged_attention.h"
#include "core/llm/paged_kv.h"
#include "core/nn/activation.h"
#include "core/nn/device.h"
#include "core/nn/softmax.h"
#include "core/nn/torch_util.h"

namespace internvl::llm {
namespace {

bool Inference() { return !at::GradMode::is_enabled(); }

// The most negative finite value of `dtype`: masked scores get it (not -inf)
// so that a fully masked row (a left-pad query) stays finite — a NaN there
// would reach real rows through 0 * NaN in probs @ V.
double Lowest(at::ScalarType dtype) {
  if (dtype == at::kBFloat16) return static_cast<float>(std::numeric_limits<c10::BFloat16>::lowest());
  if (dtype == at::kHalf) return -65504.0;
  return std::numeric_limits<float>::lowest();
}

// HF rotate_half: cat(-x2, x1) over the last dim.
at::Tensor RotateHalf(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({x.narrow(-1, half, half).neg(), x.narrow(-1, 0, half)}, -1);
}

// Decoding's few rows in one loop instead of seven ops, same arithmetic (each
// product rounded, then the sum: bit-identical to the ops).
constexpr int64_t kMaxLoopRows = kMaxFastLinearRows;

// The row kernels (gemv_kernels.h) in AVX2 where the decode kernels use it.
bool RowKernelsAvx2() { return ActiveGemvKernel() != GemvKernel::kPortable && gemv::CpuHasAvx2Fma(); }

// SwiGLU columns [0, n) of a decode step's few rows: fn(begin, end) over
// parts split between the decode threads where the rows are wide (the
// helpers idle between two products, and one 4864-wide bf16 row is ~6 us of
// exponentials on one core), else fn(0, n). Elementwise: the same bits.
constexpr int64_t kMinSwiGluColumns = 1024;  // per thread
bool SplitSwiGlu(int64_t n) { return at::get_num_threads() >= 2 && n >= 2 * kMinSwiGluColumns; }
void SwiGluColumnParts(int64_t n, absl::FunctionRef<void(int64_t, int64_t)> fn) {
  if (!SplitSwiGlu(n)) return fn(0, n);
  const int threads = at::get_num_threads();
  const int64_t chunks = std::min<int64_t>(threads, n / kMinSwiGluColumns);
  const int64_t per = ((n + chunks - 1) / chunks + 7) / 8 * 8;  // whole 8-lane vectors but the last
  ParallelChunks(chunks, threads, [&](int64_t c) {
    const int64_t begin = c * per, end = std::min(n, begin + per);
    if (begin < end) fn(begin, end);
  });
}

// SwiGlu, split as SwiGluColumnParts says.
at::Tensor DecodeSwiGlu(const at::Tensor& gate, const at::Tensor& up) {
  const int64_t n = gate.size(-1);
  if (!SplitSwiGlu(n) || gate.numel() / n > kMaxLoopRows || !SwiGluRunsKernel(gate, up)) return SwiGlu(gate, up);
  at::Tensor out = at::empty(gate.sizes(), gate.options());
  SwiGluColumnParts(n, [&](int64_t begin, int64_t end) { SwiGluColumns(gate, up, out, begin, end); });
  return out;
}

std::atomic<bool> g_fused_decode{[] {
  const char* env = std::getenv("INTERNVL_FUSED_DECODE");
  return env == nullptr || std::string(env) != "0";
}()};

std::atomic<int64_t> g_fused_layers{0};

// One product of the fused decode step on bf16 or fp32 rows: quantized weights
// (QuantLinear's decode path) or float ones through FastLinear, as the
// modules' forward would run it.
struct RowProduct {
  const QuantMatrix* quant = nullptr;
  at::Tensor w, b;  // w: float weights (unused when quantized)

  int64_t out() const { return quant != nullptr ? quant->out() : w.size(0); }
  bool Applies(at::ScalarType dtype, int64_t rows, int64_t in_features) const {
    if (quant != nullptr) return rows <= QuantLinearMaxRows() && quant->in() == in_features;
    return FastLinearApplies(dtype, rows, w, b) && w.size(1) == in_features;
  }
  void Run(const void* x, at::ScalarType dtype, int64_t rows, void* y) const {
    if (quant != nullptr) return QuantLinearRows(x, dtype, rows, *quant, b, y);
    FastLinearRows(x, dtype, rows, w, b, y);
  }
};

RowProduct DenseProduct(const DenseImpl& d) {
  if (d.quant) return {d.quant.get(), {}, d.bias};
  return {nullptr, d.weight, d.bias};
}

// The block tables and lengths of a paged step's decoding sequences.
void DecodeTables(const PagedContext& pc, std::vector<const std::vector<int32_t>*>& tables,
                  std::vector<int64_t>& lens) {
  tables.clear();
  lens.clear();
  for (int64_t i : pc.decode_seqs) {
    tables.push_back(&(*pc.seqs)[i].blocks);
    lens.push_back((*pc.seqs)[i].start + 1);
  }
}

// A contiguous CPU tensor of n values of `dtype`.
bool Row(const at::Tensor& t, at::ScalarType dtype, int64_t n) {
  return t.defined() && t.scalar_type() == dtype && t.is_contiguous() && t.numel() == n && t.device().is_cpu();
}

}  // namespace

void SetFusedDecodeEnabled(bool enabled) { g_fused_decode.store(enabled); }
bool FusedDecodeEnabled() { return g_fused_decode.load() && FastLinearEnabled(); }
int64_t FusedDecodeLayers() { return g_fused_layers.load(std::memory_order_relaxed); }

// apply_rotary_pos_emb: x * cos + rotate_half(x) * sin. x [B,T,h,d],
// cos/sin [B,T,1,d].
at::Tensor ApplyRope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t b = x.size(0), t = x.size(1), heads = x.size(2), d = x.size(3);
  if (Inference() && UseCpuKernels(x.device()) && b * t <= kMaxLoopRows && x.scalar_type() == at::kFloat &&
      cos.scalar_type() == at::kFloat && sin.scalar_type() == at::kFloat && x.stride(3) == 1 && x.stride(2) == d &&
      cos.is_contiguous() && sin.is_contiguous() && cos.numel() == b * t * d && sin.numel() == b * t * d) {
    at::Tensor out = at::empty({b, t, heads, d}, x.options());
    float* o = out.data_ptr<float>();
    const float* c = cos.data_ptr<float>();
    const float* s = sin.data_ptr<float>();
    const bool avx2 = d % 16 == 0 && RowKernelsAvx2();
    for (int64_t i = 0; i < b; ++i) {
      for (int64_t j = 0; j < t; ++j, o += heads * d) {
        const float* xt = x.data_ptr<float>() + i * x.stride(0) + j * x.stride(1);
        const int64_t cs = (i * t + j) * d;
        (avx2 ? gemv::RopeRowsAvx2 : gemv::RopeRowsPortable)(xt, heads, d, c + cs, s + cs, o);
      }
    }
    return out;
  }
  if (Inference() && UseCpuKernels(x.device()) && b * t <= kMaxLoopRows && x.scalar_type() == at::kBFloat16 &&
      cos.scalar_type() == at::kBFloat16 && sin.scalar_type() == at::kBFloat16 && x.stride(3) == 1 &&
      x.stride(2) == d && cos.is_contiguous() && sin.is_contiguous() && cos.numel() == b * t * d &&
      sin.numel() == b * t * d) {
    // The same in bf16, rounded as the ops round: each product to bf16, then
    // their sum (computed in fp32) to bf16. Bit-identical to the ops.
    at::Tensor out = at::empty({b, t, heads, d}, x.options());
    auto* o = reinterpret_cast<uint16_t*>(out.data_ptr());
    const auto* c = reinterpret_cast<const uint16_t*>(cos.data_ptr());
    const auto* s = reinterpret_cast<const uint16_t*>(sin.data_ptr());
    const auto* xd = reinterpret_cast<const uint16_t*>(x.data_ptr());
    const bool avx2 = d % 16 == 0 && RowKernelsAvx2();
    for (int64_t i = 0; i < b; ++i) {
      for (int64_t j = 0; j < t; ++j, o += heads * d) {
        const int64_t cs = (i * t + j) * d;
        (avx2 ? gemv::RopeRowsBf16Avx2 : gemv::RopeRowsBf16Portable)(xd + i * x.stride(0) + j * x.stride(1), heads, d,
                                                                     c + cs, s + cs, o);
      }
    }
    return out;
  }
  at::Tensor out = x * cos;
  if (Inference()) return out.add_(RotateHalf(x).mul_(sin));
  return out + RotateHalf(x) * sin;
}

namespace {

at::Tensor AttendRows(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v_in, const LayerContext& ctx,
                      int64_t heads, int64_t kv_heads, int64_t head_dim);

// Scaled dot-product attention with GQA and masking (or, for the serving
// engine's batched steps, over the paged KV pool: paged_attention.h), as the
// reference's eager attention: softmax(q k^T / sqrt(d) + mask) in fp32, cast
// back, times v. Query head j*G+g attends with kv head j (repeat_kv), which we
// get without copying K/V by viewing q as [B, kv_heads, G*T, d].
// q [B,T,H,d], k/v [B,T,KV,d] -> [B,T,H*d].
at::Tensor Attend(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in, const LayerContext& ctx,
                  int layer, int64_t heads, int64_t kv_heads, int64_t head_dim) {
  const int64_t t = q_in.size(1);
  at::Tensor q = ApplyRope(q_in, ctx.cos, ctx.sin);
  at::Tensor k = ApplyRope(k_in, ctx.cos, ctx.sin);
  if (ctx.paged != nullptr) return PagedAttend(q, k, v_in, *ctx.paged, layer, heads, kv_heads, head_dim);
  if (ctx.causal_chunk > 0 && !ctx.masked.defined()) {
    // Query rows [a, e) see keys [0, e): the same rows of the causal softmax
    // (the keys past e are masked to exact zeros there), without [T, T].
    std::vector<at::Tensor> parts;
    for (int64_t a = 0; a < t; a += ctx.causal_chunk) {
      const int64_t e = std::min(t, a + ctx.causal_chunk);
      LayerContext part;
      const auto long_opts = at::TensorOptions().dtype(at::kLong).device(q.device());
      at::Tensor key_pos = at::arange(e, long_opts).view({1, 1, e});
      at::Tensor query_pos = at::arange(a, e, long_opts).view({1, e - a, 1});
      part.masked = (key_pos > query_pos).unsqueeze(1).unsqueeze(1);  // [1, 1, 1, e - a, e]
      parts.push_back(
          AttendRows(q.narrow(1, a, e - a), k.narrow(1, 0, e), v_in.narrow(1, 0, e), part, heads, kv_heads, head_dim));
    }
    return at::cat(parts, 1);
  }
  return AttendRows(q, k, v_in, ctx, heads, kv_heads, head_dim);
}

// Attend's dense case over rotated q [B,T,H,d] and k/v [B,L,KV,d] (L >= T:
// the queries are the last T of the L positions when ctx.masked says so).
at::Tensor AttendRows(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v_in, const LayerContext& ctx,
                      int64_t heads, int64_t kv_heads, int64_t head_dim) {
  const int64_t b = q.size(0), t = q.size(1);
  const int64_t groups = heads / kv_heads;
  at::Tensor keys = k.transpose(1, 2);  // [B, KV, L, d]
  at::Tensor values = v_in.transpose(1, 2);
  const int64_t len = keys.size(2);
  at::Tensor qg = q.transpose(1, 2).reshape({b, kv_heads, groups * t, head_dim});
  at::Tensor scores = MatmulFp32Accumulate(qg, keys.transpose(-1, -2));  // [B, KV, G*T, L]
  const double scale = std::sqrt(static_cast<double>(head_dim));
  const bool inference = Inference();
  if (inference) {
    scores.div_(scale);
  } else {
    scores = scores / scale;
  }
  if (ctx.masked.defined()) {
    const double lowest = Lowest(scores.scalar_type());
    if (inference) {
      scores.view({b, kv_heads, groups, t, len}).masked_fill_(ctx.masked, lowest);
    } else {
      scores = scores.view({b, kv_heads, groups, t, len})
                   .masked_fill(ctx.masked, lowest)
                   .view({b, kv_heads, groups * t, len});
    }
  }
  at::Tensor probs = SoftmaxLastDimTo(scores, q.scalar_type());
  at::Tensor out = MatmulFp32Accumulate(probs, values);  // [B, KV, G*T, d]
  return out.view({b, heads, t, head_dim}).transpose(1, 2).reshape({b, t, heads * head_dim});
}

}  // namespace

DenseImpl::DenseImpl(int64_t in, int64_t out, bool has_bias, at::ScalarType dtype) {
  weight = register_parameter("weight", at::empty({out, in}, at::TensorOptions().dtype(dtype)));
  if (has_bias) bias = register_parameter("bias", at::zeros({out}, at::TensorOptions().dtype(dtype)));
}

at::Tensor DenseImpl::forward(const at::Tensor& x) {
  if (coarse && candidates > 0 && x.device().is_cpu() && !at::GradMode::is_enabled() &&
      (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16) &&
      x.numel() <= QuantLinearMaxRows() * x.size(-1)) {
    return RescoredLinear(x, *coarse, candidates, quant.get(), weight, bias);
  }
  return ForwardOwn(x);
}

at::Tensor DenseImpl::ForwardOwn(const at::Tensor& x) {
  if (quant) return QuantLinear(x, *quant, bias);
  return Linear(x, weight, bias);
}

bool QuantizeDense(DenseImpl& d, Quantization mode) {
  if (!d.quant && mode != Quantization::kNone) d.quant = QuantMatrix::Quantize(d.weight, mode);
  return d.quant != nullptr;
}

void ReleaseQuantizedWeights(const std::vector<DenseImpl*>& dense) {
  at::NoGradGuard no_grad;
  for (DenseImpl* d : dense) {
    if (d->quant) d->weight.set_data(at::empty({0}, d->weight.options()));
  }
}

EmbeddingImpl::EmbeddingImpl(int64_t vocab, int64_t hidden, at::ScalarType dtype) {
  weight = register_parameter("weight", at::empty({vocab, hidden}, at::TensorOptions().dtype(dtype)));
}

at::Tensor EmbeddingImpl::forward(const at::Tensor& ids) const { return at::embedding(weight, ids); }

RMSNormImpl::RMSNormImpl(int64_t hidden, double eps_in, at::ScalarType dtype) : eps(eps_in) {
  weight = register_parameter("weight", at::ones({hidden}, at::TensorOptions().dtype(dtype)));
}

at::Tensor RMSNormImpl::forward(const at::Tensor& x) {
  const int64_t n = x.size(-1);
  if (Inference() && UseCpuKernels(x.device()) && x.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat &&
      x.is_contiguous() && weight.is_contiguous() && n > 0 && x.numel() / n <= kMaxLoopRows) {
    // Decoding: one pass per row (the mean of squares accumulated in double).
    at::Tensor out = at::empty_like(x);
    const float* w = weight.data_ptr<float>();
    const float* in = x.data_ptr<float>();
    float* o = out.data_ptr<float>();
    const auto row = RowKernelsAvx2() ? gemv::RmsNormRowAvx2 : gemv::RmsNormRowPortable;
    for (int64_t r = 0; r < x.numel() / n; ++r, in += n, o += n) row(in, w, n, static_cast<float>(eps), o);
    return out;
  }
  if (Inference() && UseCpuKernels(x.device()) && x.scalar_type() == at::kBFloat16 &&
      weight.scalar_type() == at::kBFloat16 && x.is_contiguous() && weight.is_contiguous() && n > 0 &&
      x.numel() / n <= kMaxLoopRows) {
    // The same in bf16 (a model computed in bf16): the op chain below is 8
    // libtorch ops, ~40 us per norm and ~2 ms per decoded token over 24
    // layers' two norms. Rounded as the ops round: h * inv to bf16, then the
    // product with the weight to bf16 (the mean of squares as above).
    at::Tensor out = at::empty_like(x);
    const auto* w = reinterpret_cast<const uint16_t*>(weight.data_ptr());
    const auto* in = reinterpret_cast<const uint16_t*>(x.data_ptr());
    auto* o = reinterpret_cast<uint16_t*>(out.data_ptr());
    const auto row = RowKernelsAvx2() ? gemv::RmsNormRowBf16Avx2 : gemv::RmsNormRowBf16Portable;
    for (int64_t r = 0; r < x.numel() / n; ++r, in += n, o += n) row(in, w, n, static_cast<float>(eps), o);
    return out;
  }
  at::Tensor h = x.to(at::kFloat);
  at::Tensor variance = h.pow(2).mean(-1, /*keepdim=*/true);
  h = h * at::rsqrt(variance + eps);
  return weight * h.to(x.scalar_type());
}

namespace {

// Whether x and y are rows the decode row kernels add: outside autograd, on
// the CPU kernels, one dtype (fp32 or bf16), one shape, contiguous, few rows.
bool RowsToAdd(const at::Tensor& x, const at::Tensor& y) {
  return Inference() && UseCpuKernels(x.device()) && y.device() == x.device() && x.scalar_type() == y.scalar_type() &&
         (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16) && x.sizes() == y.sizes() &&
         x.is_contiguous() && y.is_contiguous() && x.dim() > 0 && x.size(-1) > 0 &&
         x.numel() / x.size(-1) <= kMaxLoopRows;
}

void AddRows(const at::Tensor& x, const at::Tensor& y, at::Tensor& out) {
  const int64_t n = x.numel();
  if (x.scalar_type() == at::kFloat) {
    (RowKernelsAvx2() ? gemv::AddRowAvx2 : gemv::AddRowPortable)(x.data_ptr<float>(), y.data_ptr<float>(), n,
                                                                 out.data_ptr<float>());
    return;
  }
  (RowKernelsAvx2() ? gemv::AddRowBf16Avx2 : gemv::AddRowBf16Portable)(reinterpret_cast<const uint16_t*>(x.data_ptr()),
                                                                       reinterpret_cast<const uint16_t*>(y.data_ptr()),
                                                                       n, reinterpret_cast<uint16_t*>(out.data_ptr()));
}

}  // namespace

at::Tensor Add(const at::Tensor& x, const at::Tensor& y) {
  if (!RowsToAdd(x, y)) return x + y;
  at::Tensor out = at::empty_like(x);
  AddRows(x, y, out);
  return out;
}

at::Tensor& AddInPlace(at::Tensor& x, const at::Tensor& y) {
  if (!RowsToAdd(x, y)) return x.add_(y);
  AddRows(x, y, x);
  return x;
}

at::Tensor FuseRows(const std::vector<at::Tensor*>& parts) {
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> data;
  for (const at::Tensor* p : parts) data.push_back(p->detach());
  at::Tensor fused = at::cat(data, 0);
  int64_t offset = 0;
  for (at::Tensor* p : parts) {
    const int64_t rows = p->size(0);
    p->set_data(fused.narrow(0, offset, rows));
    offset += rows;
  }
  return fused;
}

bool StillFused(const at::Tensor& fused, const std::vector<const at::Tensor*>& parts) {
  if (!fused.defined()) return false;
  const auto* base = static_cast<const char*>(fused.data_ptr());
  const int64_t row_bytes = fused.stride(0) * fused.element_size();
  int64_t offset = 0;
  for (const at::Tensor* p : parts) {
    if (static_cast<const char*>(p->data_ptr()) != base + offset * row_bytes) return false;
    offset += p->size(0);
  }
  return offset == fused.size(0);
}

// ---- Qwen2 / LLaMA ----

LlamaAttentionImpl::LlamaAttentionImpl(const LlmConfig& c, at::ScalarType dtype)
    : heads_(c.num_attention_heads), kv_heads_(c.num_key_value_heads), head_dim_(c.head_dim()) {
  const int64_t h = c.hidden_size;
  // Qwen2Attention: q/k/v bias=True, o_proj bias=False; LlamaAttention: all
  // four follow attention_bias.
  const bool o_bias = c.arch == LlmArch::kLlama && c.attention_bias;
  q_proj = register_module("q_proj", Dense(h, heads_ * head_dim_, c.attention_bias, dtype));
  k_proj = register_module("k_proj", Dense(h, kv_heads_ * head_dim_, c.attention_bias, dtype));
  v_proj = register_module("v_proj", Dense(h, kv_heads_ * head_dim_, c.attention_bias, dtype));
  o_proj = register_module("o_proj", Dense(heads_ * head_dim_, h, o_bias, dtype));
}

void LlamaAttentionImpl::Fuse() {
  qkv_w_ = FuseRows({&q_proj->weight, &k_proj->weight, &v_proj->weight});
  if (q_proj->bias.defined()) qkv_b_ = FuseRows({&q_proj->bias, &k_proj->bias, &v_proj->bias});
}

void LlamaAttentionImpl::Quantize(Quantization mode) {
  const bool q = QuantizeDense(*q_proj, mode), k = QuantizeDense(*k_proj, mode), v = QuantizeDense(*v_proj, mode);
  QuantizeDense(*o_proj, mode);
  if (q && k && v && q_proj->quant->kind() == k_proj->quant->kind() && k_proj->quant->kind() == v_proj->quant->kind() &&
      q_proj->quant->group() == k_proj->quant->group() && k_proj->quant->group() == v_proj->quant->group()) {
    qkv_q_ = QuantMatrix::Fuse({&q_proj->quant, &k_proj->quant, &v_proj->quant});
    qkv_w_ = at::Tensor();
  }
  ReleaseQuantizedWeights({q_proj.get(), k_proj.get(), v_proj.get(), o_proj.get()});
}

at::Tensor LlamaAttentionImpl::forward(const at::Tensor& x, const LayerContext& ctx, int layer) {
  const int64_t b = x.size(0), t = x.size(1);
  const int64_t qn = heads_ * head_dim_, kvn = kv_heads_ * head_dim_;
  at::Tensor q, k, v;
  const bool quantized = Inference() && qkv_q_ != nullptr;
  const bool fused = !quantized && Inference() &&
                     StillFused(qkv_w_, {&q_proj->weight, &k_proj->weight, &v_proj->weight}) &&
                     (!q_proj->bias.defined() || StillFused(qkv_b_, {&q_proj->bias, &k_proj->bias, &v_proj->bias}));
  if (quantized || fused) {
    at::Tensor qkv = quantized ? QuantLinear(x, *qkv_q_, qkv_b_) : Linear(x, qkv_w_, qkv_b_);
    q = qkv.narrow(-1, 0, qn);
    k = qkv.narrow(-1, qn, kvn);
    v = qkv.narrow(-1, qn + kvn, kvn);
  } else {
    q = q_proj(x);
    k = k_proj(x);
    v = v_proj(x);
  }
  at::Tensor out = Attend(q.view({b, t, heads_, head_dim_}), k.view({b, t, kv_heads_, head_dim_}),
                          v.view({b, t, kv_heads_, head_dim_}), ctx, layer, heads_, kv_heads_, head_dim_);
  return o_proj(out);
}

std::pair<at::Tensor, at::Tensor> LlamaAttentionImpl::QueryKey(const at::Tensor& x, const LayerContext& ctx) {
  const int64_t b = x.size(0), t = x.size(1);
  return {ApplyRope(q_proj(x).view({b, t, heads_, head_dim_}), ctx.cos, ctx.sin),
          ApplyRope(k_proj(x).view({b, t, kv_heads_, head_dim_}), ctx.cos, ctx.sin)};
}

LlamaMLPImpl::LlamaMLPImpl(const LlmConfig& c, at::ScalarType dtype) {
  gate_proj = register_module("gate_proj", Dense(c.hidden_size, c.intermediate_size, false, dtype));
  up_proj = register_module("up_proj", Dense(c.hidden_size, c.intermediate_size, false, dtype));
  down_proj = register_module("down_proj", Dense(c.intermediate_size, c.hidden_size, false, dtype));
}

void LlamaMLPImpl::Fuse() { gate_up_w_ = FuseRows({&gate_proj->weight, &up_proj->weight}); }

void LlamaMLPImpl::Quantize(Quantization mode) {
  const bool g = QuantizeDense(*gate_proj, mode), u = QuantizeDense(*up_proj, mode);
  QuantizeDense(*down_proj, mode);
  if (g && u && gate_proj->quant->kind() == up_proj->quant->kind() &&
      gate_proj->quant->group() == up_proj->quant->group()) {
    gate_up_q_ = QuantMatrix::Fuse({&gate_proj->quant, &up_proj->quant});
    gate_up_w_ = at::Tensor();
  }
  ReleaseQuantizedWeights({gate_proj.get(), up_proj.get(), down_proj.get()});
}

at::Tensor LlamaMLPImpl::forward(const at::Tensor& x) {
  if (Inference() && gate_up_q_) {
    at::Tensor gu = QuantLinear(x, *gate_up_q_, {});
    const int64_t n = gate_proj->quant->out();
    return down_proj(DecodeSwiGlu(gu.narrow(-1, 0, n), gu.narrow(-1, n, n)));
  }
  if (Inference() && StillFused(gate_up_w_, {&gate_proj->weight, &up_proj->weight})) {
    at::Tensor gu = Linear(x, gate_up_w_);
    const int64_t n = gate_proj->weight.size(0);
    return down_proj(DecodeSwiGlu(gu.narrow(-1, 0, n), gu.narrow(-1, n, n)));
  }
  return down_proj(SwiGlu(gate_proj(x), up_proj(x)));
}

LlamaDecoderLayerImpl::LlamaDecoderLayerImpl(const LlmConfig& c, at::ScalarType dtype) {
  self_attn = register_module("self_attn", LlamaAttention(c, dtype));
  mlp = register_module("mlp", LlamaMLP(c, dtype));
  input_layernorm = register_module("input_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps, dtype));
  post_attention_layernorm = register_module("post_attention_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps, dtype));
}

void LlamaDecoderLayerImpl::Fuse() {
  self_attn->Fuse();
  mlp->Fuse();
}

void LlamaDecoderLayerImpl::Quantize(Quantization mode) {
  self_attn->Quantize(mode);
  mlp->Quantize(mode);
}

at::Tensor LlamaDecoderLayerImpl::forward(const at::Tensor& x, const LayerContext& ctx) {
  at::Tensor h = Add(x, self_attn->forward(input_layernorm(x), ctx, layer_index));
  at::Tensor m = mlp(post_attention_layernorm(h));
  return Inference() ? AddInPlace(h, m) : h + m;
}

std::pair<at::Tensor, at::Tensor> LlamaDecoderLayerImpl::QueryKey(const at::Tensor& x, const LayerContext& ctx) {
  return self_attn->QueryKey(input_layernorm(x), ctx);
}

// The parts of one decoder layer the fused decode step runs.
struct FusedLayer {
  const RMSNormImpl* attention_norm = nullptr;
  const RMSNormImpl* mlp_norm = nullptr;
  RowProduct qkv, o, gate_up, down;
  int64_t heads = 0, kv_heads = 0, head_dim = 0, intermediate = 0;
  // InternLM2's wqkv rows: per kv head its G query heads, its key, its value
  // (InternLM2AttentionImpl); else all queries, all keys, all values.
  bool grouped_qkv = false;
};

// The fused decode step's view of the layers' fused weights: false where
// q|k|v or gate|up are not fused (the forward then runs them separately).
struct FusedDecodeAccess {
  static bool Parts(LlamaDecoderLayerImpl& layer, FusedLayer& f);
  static bool Parts(InternLM2DecoderLayerImpl& layer, FusedLayer& f);

 private:
  // The fused gate|up product (quantized, or float rows still fused).
  static bool GateUp(const std::shared_ptr<QuantMatrix>& quant, const at::Tensor& fused, const DenseImpl& gate,
                     const DenseImpl& up, FusedLayer& f) {
    if (quant) {
      f.gate_up = {quant.get(), {}, {}};
      f.intermediate = gate.quant->out();
      return true;
    }
    if (!StillFused(fused, {&gate.weight, &up.weight})) return false;
    f.gate_up = {nullptr, fused, {}};
    f.intermediate = gate.weight.size(0);
    return true;
  }
  static void Rest(const RMSNormImpl& attention_norm, const RMSNormImpl& mlp_norm, int64_t heads, int64_t kv_heads,
                   int64_t head_dim, bool grouped_qkv, FusedLayer& f) {
    f.attention_norm = &attention_norm;
    f.mlp_norm = &mlp_norm;
    f.heads = heads;
    f.kv_heads = kv_heads;
    f.head_dim = head_dim;
    f.grouped_qkv = grouped_qkv;
  }
};

bool FusedDecodeAccess::Parts(LlamaDecoderLayerImpl& layer, FusedLayer& f) {
  LlamaAttentionImpl& attn = *layer.self_attn;
  LlamaMLPImpl& mlp = *layer.mlp;
  if (attn.qkv_q_) {
    f.qkv = {attn.qkv_q_.get(), {}, attn.qkv_b_};
  } else if (StillFused(attn.qkv_w_, {&attn.q_proj->weight, &attn.k_proj->weight, &attn.v_proj->weight}) &&
             (!attn.q_proj->bias.defined() ||
              StillFused(attn.qkv_b_, {&attn.q_proj->bias, &attn.k_proj->bias, &attn.v_proj->bias}))) {
    f.qkv = {nullptr, attn.qkv_w_, attn.qkv_b_};
  } else {
    return false;
  }
  if (!GateUp(mlp.gate_up_q_, mlp.gate_up_w_, *mlp.gate_proj, *mlp.up_proj, f)) return false;
  f.o = DenseProduct(*attn.o_proj);
  f.down = DenseProduct(*mlp.down_proj);
  Rest(*layer.input_layernorm, *layer.post_attention_layernorm, attn.heads_, attn.kv_heads_, attn.head_dim_, false, f);
  return true;
}

bool FusedDecodeAccess::Parts(InternLM2DecoderLayerImpl& layer, FusedLayer& f) {
  InternLM2AttentionImpl& attn = *layer.attention;
  InternLM2MLPImpl& mlp = *layer.feed_forward;
  if (!GateUp(mlp.w13_q_, mlp.w13_, *mlp.w1, *mlp.w3, f)) return false;
  f.qkv = DenseProduct(*attn.wqkv);
  f.o = DenseProduct(*attn.wo);
  f.down = DenseProduct(*mlp.w2);
  Rest(*layer.attention_norm, *layer.ffn_norm, attn.heads_, attn.kv_heads_, attn.head_dim_, true, f);
  return true;
}

namespace {

// Whether the fused step runs layer `layer` (parts f) on the rows h: bf16
// activations (bf16 weights and KV cache), or fp32 ones (fp32 or bf16
// matrices, an fp32 or bf16 KV cache), as the forward's decode path runs them.
// Fills `tables` and `lens` (the decoding sequences' block tables and
// lengths) on the way.
bool FusedLayerApplies(const FusedLayer& f, const at::Tensor& h, const LayerContext& ctx, int layer,
                       std::vector<const std::vector<int32_t>*>& tables, std::vector<int64_t>& lens) {
  if (!FusedDecodeEnabled() || !Inference() || ctx.paged == nullptr) return false;
  const PagedContext& pc = *ctx.paged;
  if (!pc.prefill_seqs.empty() || !pc.decode_groups.empty() || pc.pool == nullptr) return false;
  if (h.dim() != 3 || h.size(0) != 1 || !UseCpuKernels(h.device())) return false;
  const at::ScalarType dtype = h.scalar_type();
  const bool bf16 = dtype == at::kBFloat16;
  if (!bf16 && dtype != at::kFloat) return false;
  const int64_t n = h.size(1), hidden = h.size(2);
  if (n < 1 || n > kMaxLoopRows || n != static_cast<int64_t>(pc.decode_seqs.size())) return false;
  if (!RowKernelsAvx2() || (bf16 && !SwiGluBf16RowsAvailable())) return false;
  const int64_t heads = f.heads, kv_heads = f.kv_heads, d = f.head_dim;
  if (kv_heads < 1 || heads % kv_heads != 0 || d % 16 != 0 || !Row(ctx.cos, dtype, n * d) ||
      !Row(ctx.sin, dtype, n * d)) {
    return false;
  }
  // (Norm weights in the activations' dtype: CausalLM keeps only the
  // matrices in a narrower storage dtype.)
  if (!Row(f.attention_norm->weight, dtype, hidden) || !Row(f.mlp_norm->weight, dtype, hidden)) return false;
  if (!f.qkv.Applies(dtype, n, hidden) || f.qkv.out() != (heads + 2 * kv_heads) * d ||
      !f.o.Applies(dtype, n, heads * d) || f.o.out() != hidden || !f.gate_up.Applies(dtype, n, hidden) ||
      f.gate_up.out() != 2 * f.intermediate || !f.down.Applies(dtype, n, f.intermediate) || f.down.out() != hidden) {
    return false;
  }
  const at::Tensor& kc = pc.pool->key(layer);
  const at::Tensor& vc = pc.pool->value(layer);
  if ((kc.scalar_type() != dtype && (bf16 || kc.scalar_type() != at::kBFloat16)) || kc.size(1) != kv_heads) {
    return false;
  }
  DecodeTables(pc, tables, lens);
  return PagedDecodeAttentionApplies(dtype, n, heads, d, kc, vc, tables, lens);
}

// The row kernels of the fused step for activations of type T (uint16_t:
// bf16 bits; float).
template <typename T>
struct FusedRows;

template <>
struct FusedRows<uint16_t> {
  static constexpr at::ScalarType kDType = at::kBFloat16;
  static void Norm(const uint16_t* x, const RMSNormImpl& m, int64_t n, uint16_t* out) {
    gemv::RmsNormRowBf16Avx2(x, reinterpret_cast<const uint16_t*>(m.weight.data_ptr()), n, static_cast<float>(m.eps),
                             out);
  }
  static void Rope(const uint16_t* x, int64_t heads, int64_t d, const uint16_t* cos, const uint16_t* sin,
                   uint16_t* out) {
    gemv::RopeRowsBf16Avx2(x, heads, d, cos, sin, out);
  }
  static void Add(uint16_t* h, const uint16_t* y, int64_t n) { gemv::AddRowBf16Avx2(h, y, n, h); }
};

template <>
struct FusedRows<float> {
  static constexpr at::ScalarType kDType = at::kFloat;
  static void Norm(const float* x, const RMSNormImpl& m, int64_t n, float* out) {
    gemv::RmsNormRowAvx2(x, m.weight.data_ptr<float>(), n, static_cast<float>(m.eps), out);
  }
  static void Rope(const float* x, int64_t heads, int64_t d, const float* cos, const float* sin, float* out) {
    gemv::RopeRowsAvx2(x, heads, d, cos, sin, out);
  }
  static void Add(float* h, const float* y, int64_t n) { gemv::AddRowAvx2(h, y, n, h); }
};

// The layer's forward on the rows h (contiguous), in place, where
// FusedLayerApplies (with its tables and lengths): the same kernels in the
// same order, so the same bits.
template <typename T>
void RunFusedLayer(const FusedLayer& f, at::Tensor& h, const LayerContext& ctx, int layer,
                   const std::vector<const std::vector<int32_t>*>& tables, const std::vector<int64_t>& lens) {
  using K = FusedRows<T>;
  TORCH_CHECK(h.is_contiguous(), "the fused decode step: the rows must be contiguous");
  const PagedContext& pc = *ctx.paged;
  const int64_t n = h.size(1), hidden = h.size(2);
  const int64_t heads = f.heads, kv_heads = f.kv_heads, d = f.head_dim, inter = f.intermediate;
  const int64_t groups = heads / kv_heads, qn = heads * d, kvn = kv_heads * d, width = qn + 2 * kvn;
  // Where kv head j's group of query heads, its key and its value start in a
  // row of q|k|v.
  auto q_at = [&](int64_t j) { return f.grouped_qkv ? j * (groups + 2) * d : j * groups * d; };
  auto k_at = [&](int64_t j) { return f.grouped_qkv ? (j * (groups + 2) + groups) * d : qn + j * d; };
  auto v_at = [&](int64_t j) { return f.grouped_qkv ? (j * (groups + 2) + groups + 1) * d : qn + kvn + j * d; };
  // Scratch rows reused per thread (bound to references: the helpers read the
  // caller's through the pointers they are given).
  thread_local std::vector<T> t_x, t_qkv, t_q, t_attn, t_y, t_gu, t_act, t_k;
  std::vector<T>& x = t_x;
  std::vector<T>& qkv = t_qkv;
  std::vector<T>& q = t_q;
  std::vector<T>& attended = t_attn;
  std::vector<T>& y = t_y;
  std::vector<T>& gu = t_gu;
  std::vector<T>& act = t_act;
  std::vector<T>& k = t_k;
  x.resize(n * hidden);
  qkv.resize(n * width);
  q.resize(n * qn);
  attended.resize(n * qn);
  y.resize(n * hidden);
  gu.resize(n * 2 * inter);
  act.resize(n * inter);
  k.resize(d);
  T* hp = static_cast<T*>(h.data_ptr());
  const T* cos = static_cast<const T*>(ctx.cos.data_ptr());
  const T* sin = static_cast<const T*>(ctx.sin.data_ptr());
  auto norm = [&](const RMSNormImpl& m) {
    for (int64_t r = 0; r < n; ++r) K::Norm(hp + r * hidden, m, hidden, x.data() + r * hidden);
  };

  // Attention: its norm, q|k|v, RoPE (the rotated keys and the values
  // written into their slots of the pool, rounded to a bf16 pool's dtype as
  // the forward's cast rounds them), the decode kernel, o.
  at::Tensor& kc = pc.pool->key(layer);
  at::Tensor& vc = pc.pool->value(layer);
  // The slots' lines asked for in writing now, so that they arrive while
  // q|k|v streams: written cold after it, RoPE and the writes took 1.9 us a
  // layer (median, 4-bit InternVL2-1B at 2500 positions), 0.6 so.
  const int64_t slot_bytes = d * kc.element_size();
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t j = 0; j < kv_heads; ++j) {
      const int64_t at = pc.SlotElement(kc, r, j) * kc.element_size();
      for (int64_t b = 0; b < slot_bytes; b += 64) {
        __builtin_prefetch(static_cast<char*>(kc.data_ptr()) + at + b, 1, 3);
        __builtin_prefetch(static_cast<char*>(vc.data_ptr()) + at + b, 1, 3);
      }
    }
  }
  norm(*f.attention_norm);
  f.qkv.Run(x.data(), K::kDType, n, qkv.data());
  const bool narrow_pool = kc.scalar_type() != K::kDType;  // fp32 rows, bf16 pool (FusedLayerApplies)
  for (int64_t r = 0; r < n; ++r) {
    const T* row = qkv.data() + r * width;
    const T *c = cos + r * d, *s = sin + r * d;
    for (int64_t j = 0; j < kv_heads; ++j) {
      K::Rope(row + q_at(j), groups, d, c, s, q.data() + r * qn + j * groups * d);
      const int64_t slot = pc.SlotElement(kc, r, j);
      if constexpr (std::is_same_v<T, float>) {
        if (narrow_pool) {
          K::Rope(row + k_at(j), 1, d, c, s, k.data());
          gemv::FloatToBf16Avx2(k.data(), static_cast<uint16_t*>(kc.data_ptr()) + slot, d);
          gemv::FloatToBf16Avx2(row + v_at(j), static_cast<uint16_t*>(vc.data_ptr()) + slot, d);
          continue;
        }
      }
      K::Rope(row + k_at(j), 1, d, c, s, static_cast<T*>(kc.data_ptr()) + slot);
      std::memcpy(static_cast<T*>(vc.data_ptr()) + slot, row + v_at(j), static_cast<size_t>(d) * sizeof(T));
    }
  }
  PagedDecodeAttentionRows(q.data(), K::kDType, n, heads, d, kc, vc, tables, lens, attended.data());
  f.o.Run(attended.data(), K::kDType, n, y.data());
  K::Add(hp, y.data(), n * hidden);

  // MLP: its norm, gate|up, SwiGLU, down.
  norm(*f.mlp_norm);
  f.gate_up.Run(x.data(), K::kDType, n, gu.data());
  const T* down_in = act.data();
  at::Tensor swiglu;
  if constexpr (std::is_same_v<T, uint16_t>) {
    SwiGluColumnParts(inter, [&](int64_t begin, int64_t end) {
      SwiGluBf16Rows(gu.data(), gu.data() + inter, 2 * inter, act.data(), inter, n, begin, end);
    });
  } else {
    // fp32: libtorch's silu and product (as SwiGlu), over views of the
    // gate|up rows with the forward's shape and strides (the same bits).
    const auto opts = at::TensorOptions().dtype(at::kFloat);
    const at::Tensor gate = at::from_blob(gu.data(), {1, n, inter}, {n * 2 * inter, 2 * inter, 1}, opts);
    const at::Tensor up = at::from_blob(gu.data() + inter, {1, n, inter}, {n * 2 * inter, 2 * inter, 1}, opts);
    swiglu = SwiGlu(gate, up);
    down_in = swiglu.data_ptr<float>();
  }
  f.down.Run(down_in, K::kDType, n, y.data());
  K::Add(hp, y.data(), n * hidden);
  g_fused_layers.fetch_add(1, std::memory_order_relaxed);
}

// DecoderLayerImpl::DecodeInPlace for either layer family.
template <typename Layer>
bool DecodeLayerInPlace(Layer& layer, at::Tensor& h, const LayerContext& ctx, bool h_owned) {
  FusedLayer f;
  thread_local std::vector<const std::vector<int32_t>*> t_tables;
  thread_local std::vector<int64_t> t_lens;
  if (!FusedDecodeAccess::Parts(layer, f) || !FusedLayerApplies(f, h, ctx, layer.layer_index, t_tables, t_lens)) {
    return false;
  }
  if (!h_owned || !h.is_contiguous()) h = h.clone(at::MemoryFormat::Contiguous);
  if (h.scalar_type() == at::kBFloat16) {
    RunFusedLayer<uint16_t>(f, h, ctx, layer.layer_index, t_tables, t_lens);
  } else {
    RunFusedLayer<float>(f, h, ctx, layer.layer_index, t_tables, t_lens);
  }
  return true;
}

}  // namespace

bool LlamaDecoderLayerImpl::DecodeInPlace(at::Tensor& h, const LayerContext& ctx, bool h_owned) {
  return DecodeLayerInPlace(*this, h, ctx, h_owned);
}

// ---- InternLM2 ----

InternLM2AttentionImpl::InternLM2AttentionImpl(const LlmConfig& c, at::ScalarType dtype)
    : heads_(c.num_attention_heads), kv_heads_(c.num_key_value_heads), head_dim_(c.head_dim()) {
  wqkv = register_module("wqkv", Dense(c.hidden_size, (heads_ + 2 * kv_heads_) * head_dim_, c.attention_bias, dtype));
  wo = register_module("wo", Dense(heads_ * head_dim_, c.hidden_size, c.attention_bias, dtype));
}

at::Tensor InternLM2AttentionImpl::forward(const at::Tensor& x, const LayerContext& ctx, int layer) {
  const int64_t b = x.size(0), t = x.size(1);
  const int64_t groups = heads_ / kv_heads_;
  // rearrange(qkv, 'b q (h gs d) -> b q h gs d', gs=2+G): per kv head, G query
  // heads, then its key head, then its value head.
  at::Tensor qkv = wqkv(x).view({b, t, kv_heads_, groups + 2, head_dim_});
  at::Tensor q = qkv.narrow(3, 0, groups).reshape({b, t, heads_, head_dim_});
  at::Tensor k = qkv.select(3, groups);
  at::Tensor v = qkv.select(3, groups + 1);
  return wo(Attend(q, k, v, ctx, layer, heads_, kv_heads_, head_dim_));
}

std::pair<at::Tensor, at::Tensor> InternLM2AttentionImpl::QueryKey(const at::Tensor& x, const LayerContext& ctx) {
  const int64_t b = x.size(0), t = x.size(1);
  const int64_t groups = heads_ / kv_heads_;
  at::Tensor qkv = wqkv(x).view({b, t, kv_heads_, groups + 2, head_dim_});
  return {ApplyRope(qkv.narrow(3, 0, groups).reshape({b, t, heads_, head_dim_}), ctx.cos, ctx.sin),
          ApplyRope(qkv.select(3, groups), ctx.cos, ctx.sin)};
}

InternLM2MLPImpl::InternLM2MLPImpl(const LlmConfig& c, at::ScalarType dtype) {
  w1 = register_module("w1", Dense(c.hidden_size, c.intermediate_size, false, dtype));
  w3 = register_module("w3", Dense(c.hidden_size, c.intermediate_size, false, dtype));
  w2 = register_module("w2", Dense(c.intermediate_size, c.hidden_size, false, dtype));
}

void InternLM2MLPImpl::Fuse() { w13_ = FuseRows({&w1->weight, &w3->weight}); }

void InternLM2MLPImpl::Quantize(Quantization mode) {
  const bool a = QuantizeDense(*w1, mode), c = QuantizeDense(*w3, mode);
  QuantizeDense(*w2, mode);
  if (a && c && w1->quant->kind() == w3->quant->kind() && w1->quant->group() == w3->quant->group()) {
    w13_q_ = QuantMatrix::Fuse({&w1->quant, &w3->quant});
    w13_ = at::Tensor();
  }
  ReleaseQuantizedWeights({w1.get(), w3.get(), w2.get()});
}

at::Tensor InternLM2MLPImpl::forward(const at::Tensor& x) {
  if (Inference() && w13_q_) {
    at::Tensor gu = QuantLinear(x, *w13_q_, {});
    const int64_t n = w1->quant->out();
    return w2(DecodeSwiGlu(gu.narrow(-1, 0, n), gu.narrow(-1, n, n)));
  }
  if (Inference() && StillFused(w13_, {&w1->weight, &w3->weight})) {
    at::Tensor gu = Linear(x, w13_);
    const int64_t n = w1->weight.size(0);
    return w2(DecodeSwiGlu(gu.narrow(-1, 0, n), gu.narrow(-1, n, n)));
  }
  return w2(SwiGlu(w1(x), w3(x)));
}

InternLM2DecoderLayerImpl::InternLM2DecoderLayerImpl(const LlmConfig& c, at::ScalarType dtype) {
  attention = register_module("attention", InternLM2Attention(c, dtype));
  feed_forward = register_module("feed_forward", InternLM2MLP(c, dtype));
  attention_norm = register_module("attention_norm", RMSNorm(c.hidden_size, c.rms_norm_eps, dtype));
  ffn_norm = register_module("ffn_norm", RMSNorm(c.hidden_size, c.rms_norm_eps, dtype));
}

void InternLM2DecoderLayerImpl::Fuse() { feed_forward->Fuse(); }

void InternLM2DecoderLayerImpl::Quantize(Quantization mode) {
  QuantizeDense(*attention->wqkv, mode);
  QuantizeDense(*attention->wo, mode);
  ReleaseQuantizedWeights({attention->wqkv.get(), attention->wo.get()});
  feed_forward->Quantize(mode);
}

at::Tensor InternLM2DecoderLayerImpl::forward(const at::Tensor& x, const LayerContext& ctx) {
  at::Tensor h = Add(x, attention->forward(attention_norm(x), ctx, layer_index));
  at::Tensor m = feed_forward(ffn_norm(h));
  return Inference() ? AddInPlace(h, m) : h + m;
}

std::pair<at::Tensor, at::Tensor> InternLM2DecoderLayerImpl::QueryKey(const at::Tensor& x, const LayerContext& ctx) {
  return attention->QueryKey(attention_norm(x), ctx);
}

bool InternLM2DecoderLayerImpl::DecodeInPlace(at::Tensor& h, const LayerContext& ctx, bool h_owned) {
  return DecodeLayerInPlace(*this, h, ctx, h_owned);
}

// ---- Whole model ----

DecoderModelImpl::DecoderModelImpl(const LlmConfig& c, at::ScalarType dtype) {
  const bool internlm2 = c.arch == LlmArch::kInternLM2;
  embed = register_module(internlm2 ? "tok_embeddings" : "embed_tokens", Embedding(c.vocab_size, c.hidden_size, dtype));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    std::shared_ptr<DecoderLayerImpl> layer;
    if (internlm2) {
      layer = std::make_shared<InternLM2DecoderLayerImpl>(c, dtype);
    } else {
      layer = std::make_shared<LlamaDecoderLayerImpl>(c, dtype);
    }
    layer->layer_index = i;
    layers->push_back(layer);
    typed_layers.push_back(layer);
  }
  norm = register_module("norm", RMSNorm(c.hidden_size, c.rms_norm_eps, dtype));
}

at::Tensor DecoderModelImpl::forward(const at::Tensor& inputs_embeds, const LayerContext& ctx) {
  at::Tensor h = inputs_embeds;
  bool owned = false;  // h is this pass's own tensor (a layer's output or the copy below)
  for (auto& layer : typed_layers) {
    if (layer->DecodeInPlace(h, ctx, owned)) {
      owned = true;
    } else {
      h = layer->forward(h, ctx);
      owned = Inference();  // (outside autograd a layer returns a fresh tensor)
    }
  }
  return norm(h);
}

LanguageModelImpl::LanguageModelImpl(const LlmConfig& c, at::ScalarType dtype) {
  model = register_module("model", DecoderModel(c, dtype));
  head = register_module(c.arch == LlmArch::kInternLM2 ? "output" : "lm_head",
                         Dense(c.hidden_size, c.vocab_size, false, dtype));
}

}  // namespace internvl::llm
