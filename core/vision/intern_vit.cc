#include "core/vision/intern_vit.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/nn/functional/activation.h>

#include "core/nn/attention.h"
#include "core/nn/norm.h"
#include "core/nn/softmax.h"
#include "core/nn/torch_compat.h"
#include "core/nn/torch_util.h"

namespace internvl {

LoadedLinearImpl::LoadedLinearImpl(int64_t in, int64_t out, bool bias) : in_(in), out_(out), has_bias_(bias) {
  reset();
}

void LoadedLinearImpl::reset() {
  weight = register_parameter("weight", at::empty({out_, in_}));
  if (has_bias_) bias = register_parameter("bias", at::empty({out_}));
}

at::Tensor LoadedLinearImpl::forward(const at::Tensor& x) { return at::linear(x, weight, bias); }

RMSNormImpl::RMSNormImpl(int64_t dim, double eps) : eps_(eps) {
  weight = register_parameter("weight", at::ones({dim}));
}

at::Tensor RMSNormImpl::forward(const at::Tensor& x) {
  // as InternRMSNorm: variance in fp32, result cast back before the weight.
  at::Tensor h = x.to(at::kFloat);
  at::Tensor var = h.pow(2).mean(-1, /*keepdim=*/true);
  h = h * at::rsqrt(var + eps_);
  return weight * h.to(x.scalar_type());
}

VitNormImpl::VitNormImpl(const VisionConfig& config)
    : layer_norm_(config.norm_type == VisionConfig::Norm::kLayerNorm), eps_(config.layer_norm_eps) {
  weight = register_parameter("weight", at::ones({config.hidden_size}));
  if (layer_norm_) bias = register_parameter("bias", at::zeros({config.hidden_size}));
}

at::Tensor VitNormImpl::forward(const at::Tensor& x) {
  if (layer_norm_) return LayerNormLastDim(x, weight, bias, eps_);
  at::Tensor h = x.to(at::kFloat);
  h = h * at::rsqrt(h.pow(2).mean(-1, true) + eps_);
  return weight * h.to(x.scalar_type());
}

VisionEmbeddingsImpl::VisionEmbeddingsImpl(const VisionConfig& c) : grid_(c.image_size / c.patch_size) {
  class_embedding = register_parameter("class_embedding", at::zeros({1, 1, c.hidden_size}));
  patch_embedding = register_module(
      "patch_embedding",
      torch::nn::Conv2d(torch::nn::Conv2dOptions(c.num_channels, c.hidden_size, c.patch_size).stride(c.patch_size)));
  position_embedding = register_parameter("position_embedding", at::zeros({1, grid_ * grid_ + 1, c.hidden_size}));
}

at::Tensor VisionEmbeddingsImpl::forward(const at::Tensor& pixel_values) {
  const auto dtype = patch_embedding->weight.scalar_type();
  at::Tensor patches = patch_embedding->forward(pixel_values.to(dtype));  // [B,C,h,w]
  const int64_t B = patches.size(0), C = patches.size(1), h = patches.size(2), w = patches.size(3);
  patches = patches.flatten(2).transpose(1, 2);  // [B,hw,C]
  at::Tensor cls = class_embedding.expand({B, 1, C}).to(dtype);
  at::Tensor x = at::cat({cls, patches}, 1);
  at::Tensor pos = position_embedding;
  if (h != grid_ || w != grid_) {
    // as _get_pos_embed: bicubic interpolation in fp32, align_corners=False.
    at::Tensor grid = position_embedding.slice(1, 1).reshape({1, grid_, grid_, C}).permute({0, 3, 1, 2}).to(at::kFloat);
    grid = at::upsample_bicubic2d(grid, {h, w}, /*align_corners=*/false);
    grid = grid.reshape({1, C, h * w}).permute({0, 2, 1}).to(dtype);
    pos = at::cat({position_embedding.slice(1, 0, 1), grid}, 1);
  }
  return x + pos.to(dtype);
}

VisionAttentionImpl::VisionAttentionImpl(const VisionConfig& c)
    : heads_(c.num_attention_heads), head_dim_(c.hidden_size / c.num_attention_heads) {
  scale_ = 1.0 / std::sqrt(static_cast<double>(head_dim_));
  qkv = register_module("qkv", LoadedLinear(c.hidden_size, 3 * c.hidden_size, c.qkv_bias));
  proj = register_module("proj", LoadedLinear(c.hidden_size, c.hidden_size));
  if (c.qk_normalization) {
    // The reference uses InternRMSNorm for q/k whatever norm_type says.
    q_norm = register_module("q_norm", RMSNorm(c.hidden_size, c.layer_norm_eps));
    k_norm = register_module("k_norm", RMSNorm(c.hidden_size, c.layer_norm_eps));
  }
}

at::Tensor VisionAttentionImpl::forward(const at::Tensor& x) {
  const int64_t B = x.size(0), N = x.size(1), C = x.size(2);
  at::Tensor qkv_out = qkv->forward(x).reshape({B, N, 3, heads_, head_dim_});
  at::Tensor q, k, v;
  if (q_norm) {
    // qk-normalisation over the full width, before splitting into heads.
    q = q_norm->forward(qkv_out.select(2, 0).reshape({B, N, C})).view({B, N, heads_, head_dim_});
    k = k_norm->forward(qkv_out.select(2, 1).reshape({B, N, C})).view({B, N, heads_, head_dim_});
  } else {
    q = qkv_out.select(2, 0);
    k = qkv_out.select(2, 1);
  }
  v = qkv_out.select(2, 2);
  q = q.transpose(1, 2);  // [B,H,N,D]
  k = k.transpose(1, 2);
  v = v.transpose(1, 2);
#if INTERNVL_TORCH_HAS_SDPA
  // Off the CPU (Torch 2.x): one fused attention kernel (flash / memory-
  // efficient), softmax in fp32, the default scale head_dim^-0.5.
  if (!x.device().is_cpu()) {
    at::Tensor o = at::scaled_dot_product_attention(q, k, v);
    return proj->forward(o.transpose(1, 2).reshape({B, N, C}));
  }
#endif
  if (FusedAttentionRuns(q, k, v)) {
    // bf16 on a CPU with AVX-512-BF16 (attention.h): scores, softmax and
    // values per (tile, head) in one kernel, the same roundings as the op
    // chain below, no [heads, N, N] scores. (q * scale keeps q's layout.)
    return proj->forward(FusedAttentionBf16(q * scale_, k, v));
  }
  if (x.device().is_cpu() && !at::GradMode::is_enabled() && x.scalar_type() == at::kFloat && query_block > 0) {
    // The (tile, head) pairs shared among libtorch's threads, each pair on
    // one (inside the parallel region libtorch's ops and OpenBLAS run
    // single-threaded) over blocks of query rows: scores of the pre-scaled
    // q (as the reference), softmax in place, values written straight into
    // the output's [N, heads * head_dim] rows.
    const at::Tensor qs = q * scale_;
    const int64_t rows = std::min(query_block, N);
    at::Tensor out = at::empty({B, N, heads_, head_dim_}, x.options());
    const bool inference = c10::InferenceMode::is_enabled();
    at::parallel_for(0, B * heads_, 1, [&](int64_t p0, int64_t p1) {
      // (Thread-local modes do not follow into OpenMP's threads.)
      c10::InferenceMode mode(inference);
      at::NoGradGuard no_grad;
      at::Tensor scores = at::empty({rows, N}, x.options());
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t b = p / heads_, h = p % heads_;
        const at::Tensor qh = qs.select(0, b).select(0, h), kt = k.select(0, b).select(0, h).t();
        const at::Tensor vh = v.select(0, b).select(0, h);
        const at::Tensor oh = out.select(0, b).select(1, h);  // [N, head_dim], rows heads * head_dim apart
        for (int64_t r0 = 0; r0 < N; r0 += rows) {
          const int64_t r1 = std::min(N, r0 + rows);
          at::Tensor s = scores.slice(0, 0, r1 - r0);
          at::mm_out(s, qh.slice(0, r0, r1), kt);
          s = SoftmaxLastDimFp32(s);
          at::Tensor o = oh.slice(0, r0, r1);
          at::mm_out(o, s, vh);
        }
      }
    });
    return proj->forward(out.view({B, N, C}));
  }
  // Scores for a group of heads at a time: [B,g,N,N] stays under glibc's
  // 32 MB mmap threshold (a 448px tile has N=1025: all 16 heads would be a
  // 67 MB buffer, mapped and zeroed by the kernel on every layer).
  constexpr int64_t kScoreBytes = 16 << 20;
  const int64_t per_head = B * N * N * static_cast<int64_t>(at::elementSize(x.scalar_type()));
  const int64_t group = std::max<int64_t>(1, std::min<int64_t>(heads_, kScoreBytes / std::max<int64_t>(per_head, 1)));
  at::Tensor out = at::empty({B, heads_, N, head_dim_}, x.options());
  for (int64_t h0 = 0; h0 < heads_; h0 += group) {
    const int64_t h1 = std::min(heads_, h0 + group);
    at::Tensor qs = q.slice(1, h0, h1), ks = k.slice(1, h0, h1), vs = v.slice(1, h0, h1);
    // as _naive_attn: (q * scale) @ k^T, softmax, @ v.
    at::Tensor attn = MatmulFp32Accumulate(qs * scale_, ks.transpose(-2, -1));
    // (Our in-place kernels where the CPU has them; as libtorch's op: bf16
    // scores computed in fp32 and rounded once.)
    attn = attn.scalar_type() == at::kFloat ? SoftmaxLastDimFp32(attn) : SoftmaxLastDimBf16(attn);
    out.slice(1, h0, h1).copy_(MatmulFp32Accumulate(attn, vs));
  }
  out = out.transpose(1, 2).reshape({B, N, C});
  return proj->forward(out);
}

VisionMlpImpl::VisionMlpImpl(const VisionConfig& c) {
  fc1 = register_module("fc1", LoadedLinear(c.hidden_size, c.intermediate_size));
  fc2 = register_module("fc2", LoadedLinear(c.intermediate_size, c.hidden_size));
}

at::Tensor VisionMlpImpl::forward(const at::Tensor& x) {
  at::Tensor hidden = fc1->forward(x);
  // In place when no gradient flows (one [rows, 4C] buffer instead of two).
  if (!at::GradMode::is_enabled()) return fc2->forward(at::gelu_out(hidden, hidden));
  return fc2->forward(at::gelu(hidden));
}

VisionLayerImpl::VisionLayerImpl(const VisionConfig& c) {
  attn = register_module("attn", VisionAttention(c));
  mlp = register_module("mlp", VisionMlp(c));
  norm1 = register_module("norm1", VitNorm(c));
  norm2 = register_module("norm2", VitNorm(c));
  ls1 = register_parameter("ls1", at::ones({c.hidden_size}));
  ls2 = register_parameter("ls2", at::ones({c.hidden_size}));
}

at::Tensor VisionLayerImpl::forward(const at::Tensor& x) {
  if (!x.device().is_cpu() || at::GradMode::is_enabled() || x.dim() != 3) {
    at::Tensor h = x + attn->forward(norm1->forward(x).to(x.scalar_type())) * ls1;
    return h + mlp->forward(norm2->forward(h).to(h.scalar_type())) * ls2;
  }
  // Inference on the CPU, the same operations per row in pieces: the
  // attention a few tiles at a time (its [tiles, N, 3C] qkv product), the MLP
  // a few rows at a time (its [rows, 4C] hidden layer), each written into the
  // layer's output. A batch of 4 tiles otherwise makes 50-67 MB temporaries,
  // ~430k fresh pages per tile over the 24 layers (bench_vision).
  const int64_t B = x.size(0), N = x.size(1), C = x.size(2);
  const int64_t elem = static_cast<int64_t>(x.element_size());
  const at::Tensor xc = x.contiguous();
  at::Tensor h = at::empty_like(xc);
  const int64_t tiles = std::max<int64_t>(1, max_temp_bytes / std::max<int64_t>(1, 3 * N * C * elem));
  for (int64_t b0 = 0; b0 < B; b0 += tiles) {
    const int64_t b1 = std::min(B, b0 + tiles);
    const at::Tensor xs = xc.slice(0, b0, b1);
    at::Tensor hs = h.slice(0, b0, b1);
    at::add_out(hs, xs, attn->forward(norm1->forward(xs).to(x.scalar_type())) * ls1);
  }
  const int64_t hidden = mlp->fc1->weight.size(0);
  const int64_t rows = std::max<int64_t>(1, max_temp_bytes / std::max<int64_t>(1, hidden * elem));
  const at::Tensor h2 = h.view({B * N, C});
  at::Tensor out = at::empty_like(h);
  at::Tensor out2 = out.view({B * N, C});
  for (int64_t r0 = 0; r0 < B * N; r0 += rows) {
    const int64_t r1 = std::min(B * N, r0 + rows);
    const at::Tensor hr = h2.slice(0, r0, r1);
    at::Tensor o = out2.slice(0, r0, r1);
    at::add_out(o, hr, mlp->forward(norm2->forward(hr).to(h.scalar_type())) * ls2);
  }
  return out;
}

VisionEncoderImpl::VisionEncoderImpl(const VisionConfig& c) {
  layers = register_module("layers", torch::nn::ModuleList());
  for (int i = 0; i < c.num_hidden_layers; ++i) layers->push_back(VisionLayer(c));
}

InternVisionModelImpl::InternVisionModelImpl(const VisionConfig& c) : num_hidden_layers_(c.num_hidden_layers) {
  embeddings = register_module("embeddings", VisionEmbeddings(c));
  encoder = register_module("encoder", VisionEncoder(c));
}

at::Tensor InternVisionModelImpl::forward(const at::Tensor& pixel_values, int64_t num_layers) {
  if (num_layers < 0) num_layers = num_hidden_layers_;
  at::Tensor x = embeddings->forward(pixel_values);
  for (int64_t i = 0; i < num_layers; ++i) x = encoder->layers->ptr<VisionLayerImpl>(i)->forward(x);
  return x;
}

}  // namespace internvl
