#include "core/train/trainer.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <numeric>
#include <optional>
#include <random>
#include <set>
#include <string>
// Gloo data parallel where this libtorch has it and ships its headers
// (trainer.cmake defines INTERNVL_NO_GLOO otherwise): one process then.
#if defined(USE_C10D_GLOO) && !defined(INTERNVL_NO_GLOO)
#define INTERNVL_HAVE_GLOO 1
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#endif
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/files.h"
#include "core/hub/hub_download.h"
#include "core/llm/causal_lm.h"
#include "core/model_path.h"
#include "core/nn/device.h"
#include "core/nn/torch_compat.h"
#include "core/nn/torch_util.h"
#include "core/safetensors.h"
#include "core/status.h"
#include "core/tokenizer/chat_template.h"
#include "core/tokenizer/tokenizer.h"
#include "core/train/data.h"
#include "core/vision/vision_model_torch.h"
#include "nlohmann/json.hpp"

namespace internvl::train {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
constexpr int64_t kIgnoreIndex = -100;

// ---------------------------------------------------------------------------
// Data parallel: a c10d Gloo process group (TCPStore rendezvous on
// master_addr:master_port). With world_size 1 every call is a no-op.
class Distributed {
 public:
  static absl::StatusOr<std::unique_ptr<Distributed>> Create(const TrainOptions& o) {
    auto d = std::unique_ptr<Distributed>(new Distributed());
    d->rank_ = o.rank;
    d->world_ = o.world_size;
    if (o.world_size == 1) return d;
#ifndef INTERNVL_HAVE_GLOO
    return absl::FailedPreconditionError(
        absl::StrCat("world_size ", o.world_size, ": this build's libtorch has no Gloo (train with one process)"));
#else
    INTERNVL_RETURN_IF_ERROR(TorchGuard("joining the process group", [&] {
      c10d::TCPStoreOptions so;
      so.port = static_cast<uint16_t>(o.master_port);
      so.isServer = o.rank == 0;
      so.numWorkers = o.world_size;
      so.waitWorkers = true;
      so.timeout = std::chrono::minutes(5);
      auto store = c10::make_intrusive<c10d::TCPStore>(o.master_addr, so);
      auto opts = c10d::ProcessGroupGloo::Options::create();
      opts->timeout = std::chrono::minutes(30);
      opts->devices.push_back(
          c10d::ProcessGroupGloo::createDeviceForHostname(o.master_addr == "localhost" ? "127.0.0.1" : o.master_addr));
      d->pg_ = c10::make_intrusive<c10d::ProcessGroupGloo>(store, o.rank, o.world_size, opts);
    }));
    return d;
#endif
  }

  int rank() const { return rank_; }
  int world() const { return world_; }

  // Sums every tensor across ranks, in place. Tensors are packed into
  // ~32 MB flat buckets so that each collective moves a useful amount.
  absl::Status AllReduceSum(const std::vector<at::Tensor>& tensors) {
    if (world_ == 1 || tensors.empty()) return absl::OkStatus();
#ifndef INTERNVL_HAVE_GLOO
    return absl::FailedPreconditionError("no Gloo in this build");
#else
    return TorchGuard("all-reducing across ranks", [&] {
      constexpr int64_t kBucket = 8 << 20;  // elements (fp32: 32 MB)
      size_t i = 0;
      while (i < tensors.size()) {
        size_t j = i;
        int64_t n = 0;
        while (j < tensors.size() && (j == i || n + tensors[j].numel() <= kBucket)) n += tensors[j++].numel();
        std::vector<at::Tensor> flat_parts;
        for (size_t k = i; k < j; ++k) flat_parts.push_back(tensors[k].reshape(-1));
        // Gloo reduces host tensors: device gradients cross over once per bucket.
        std::vector<at::Tensor> bucket{at::cat(flat_parts).to(at::kCPU)};
        pg_->allreduce(bucket)->wait();
        int64_t off = 0;
        for (size_t k = i; k < j; ++k) {
          const int64_t m = tensors[k].numel();
          tensors[k].copy_(bucket[0].narrow(0, off, m).view_as(tensors[k]));
          off += m;
        }
        i = j;
      }
    });
#endif
  }

  absl::Status Barrier() {
    if (world_ == 1) return absl::OkStatus();
#ifndef INTERNVL_HAVE_GLOO
    return absl::FailedPreconditionError("no Gloo in this build");
#else
    return TorchGuard("waiting for the other ranks", [&] { pg_->barrier()->wait(); });
#endif
  }

 private:
  Distributed() = default;
  int rank_ = 0, world_ = 1;
#ifdef INTERNVL_HAVE_GLOO
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg_;
#endif
};

// ---------------------------------------------------------------------------
// The model being trained: the frozen-or-not vision path, the LLM, and every
// parameter under its checkpoint name.
struct Param {
  std::string name;
  at::Tensor tensor;
  bool trainable = false;
  bool decay = false;
  bool adapter = false;  // a LoRA matrix: saved in lora.safetensors, not in the model
};

// A LoRA adapter on one projection: weight = base + scale * B A while training.
struct LoraAdapter {
  std::string name;  // checkpoint name of the projection, e.g. language_model.model.layers.0.self_attn.q_proj
  std::shared_ptr<llm::DenseImpl> dense;
  at::Tensor base;  // the registered (frozen) weight
  at::Tensor a, b;  // [r, in], [out, r]
};

struct TrainModel {
  std::string source_dir;  // config, tokenizer and other files come from here
  InternVLConfig config;
  std::unique_ptr<tokenizer::Tokenizer> tokenizer;
  std::unique_ptr<VisionModel> vision;
  std::unique_ptr<llm::CausalLM> lm;
  c10::Device device = c10::Device(c10::kCPU);
  int64_t img_context_id = -1;
  int64_t embed_padding_idx = -1;  // nn.Embedding(padding_idx=pad_token_id): no gradient for that row
  std::vector<Param> params;       // vision_model.*, language_model.*, mlp1.* (the official order), adapters
  std::vector<LoraAdapter> lora;
  double lora_scale = 0;

  // Puts the merged LoRA weights in place for a forward/backward (no-op
  // without LoRA); Unmerge restores the frozen base weights.
  void MergeLora() {
    for (LoraAdapter& l : lora) l.dense->weight = l.base + lora_scale * l.b.mm(l.a);
  }
  void UnmergeLora() {
    for (LoraAdapter& l : lora) l.dense->weight = l.base;
  }
};

// PEFT's target_modules in the official wrap_llm_lora.
bool IsLoraTarget(LlmArch arch, absl::string_view module_name) {
  static const char* const kInternLM2[] = {"attention.wqkv", "attention.wo", "feed_forward.w1", "feed_forward.w2",
                                           "feed_forward.w3"};
  static const char* const kOthers[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                        "mlp.gate_proj",    "mlp.down_proj",    "mlp.up_proj"};
  if (arch == LlmArch::kInternLM2) {
    for (const char* t : kInternLM2)
      if (absl::EndsWith(module_name, absl::StrCat(".", t))) return true;
    return false;
  }
  for (const char* t : kOthers)
    if (absl::EndsWith(module_name, absl::StrCat(".", t))) return true;
  return false;
}

constexpr char kLoraFile[] = "lora.safetensors";

// Copies the values of `params` whose names `store` holds and `pick` selects.
absl::Status OverwriteFrom(const TensorStore& store, std::vector<Param>& params,
                           const std::function<bool(const Param&)>& pick) {
  return TorchGuard("loading checkpoint tensors", [&]() -> absl::Status {
    at::NoGradGuard no_grad;
    for (Param& p : params) {
      if (!pick(p)) continue;
      INTERNVL_ASSIGN_OR_RETURN(const TensorView* v, store.Get(p.name));
      at::Tensor t = TensorFromView(*v, at::kFloat);
      if (t.sizes() != p.tensor.sizes())
        return absl::InvalidArgumentError(absl::StrCat(store.description(), ": shape mismatch for ", p.name));
      p.tensor.copy_(t);
    }
    return absl::OkStatus();
  });
}

bool IsLayerNormParam(const InternVLConfig& c, absl::string_view name) {
  if (absl::StartsWith(name, "mlp1.0.")) return true;  // nn.LayerNorm
  if (absl::StartsWith(name, "vision_model.") && c.vision.norm_type == VisionConfig::Norm::kLayerNorm &&
      (absl::StrContains(name, ".norm1.") || absl::StrContains(name, ".norm2.")))
    return true;
  if (absl::StartsWith(name, "language_model.") && c.llm.arch == LlmArch::kLlama &&
      (absl::EndsWith(name, "layernorm.weight") || name == "language_model.model.norm.weight"))
    return true;  // LlamaRMSNorm is in ALL_LAYERNORM_LAYERS; Qwen2/InternLM2 RMSNorm are not
  return false;
}

absl::StatusOr<std::unique_ptr<TrainModel>> LoadTrainModel(const TrainOptions& o, const std::string& resume_dir) {
  auto m = std::make_unique<TrainModel>();
  INTERNVL_ASSIGN_OR_RETURN(m->source_dir, hub::ResolveOrDownloadModel(o.model));
  INTERNVL_ASSIGN_OR_RETURN(m->config, LoadInternVLConfig(m->source_dir));
  INTERNVL_ASSIGN_OR_RETURN(m->tokenizer, tokenizer::Tokenizer::Load(m->source_dir));
  const std::optional<int> ctx = m->tokenizer->TokenToId(tokenizer::kImgContextToken);
  if (!ctx) {
    return absl::InvalidArgumentError(
        absl::StrCat("the tokenizer of ", m->source_dir, " has no ", tokenizer::kImgContextToken, " token"));
  }
  m->img_context_id = *ctx;
  if (m->config.llm.pad_token_id) m->embed_padding_idx = *m->config.llm.pad_token_id;
  // Resuming loads the checkpoint's weights, except with LoRA: its model is
  // merged, so the frozen base comes from the source and the adapters and
  // the rest from the checkpoint.
  const bool lora = o.lora_rank > 0;
  const std::string dir = resume_dir.empty() || lora ? m->source_dir : resume_dir;
  INTERNVL_ASSIGN_OR_RETURN(auto store, TensorStore::OpenDir(dir));
  // Training runs on an fp32 master copy of every weight (HF loads the
  // model in fp32 for fp32 and for --bf16 autocast training alike).
  INTERNVL_ASSIGN_OR_RETURN(m->device, ParseDevice(o.device));
  INTERNVL_ASSIGN_OR_RETURN(m->vision,
                            VisionModel::Load(m->config, *store, VisionOptions{.dtype = "fp32", .device = o.device}));
  llm::Precision precision = llm::Precision::Uniform(at::kFloat);
  precision.device = m->device;
  INTERNVL_ASSIGN_OR_RETURN(m->lm, llm::CausalLM::Load(m->config.llm, *store, precision));

  for (auto& [name, t] : NamedVisionParameters(*m->vision)) {
    if (absl::StartsWith(name, "vision_model.")) m->params.push_back(Param{name, t});
  }
  for (const auto& item : m->lm->module()->named_parameters(/*recurse=*/true)) {
    m->params.push_back(Param{absl::StrCat("language_model.", item.key()), item.value()});
  }
  for (auto& [name, t] : NamedVisionParameters(*m->vision)) {
    if (absl::StartsWith(name, "mlp1.")) m->params.push_back(Param{name, t});
  }
  const std::string head_prefix =
      m->config.llm.arch == LlmArch::kInternLM2 ? "language_model.output." : "language_model.lm_head.";
  for (Param& p : m->params) {
    const bool vision = absl::StartsWith(p.name, "vision_model.");
    const bool mlp = absl::StartsWith(p.name, "mlp1.");
    const bool head = absl::StartsWith(p.name, head_prefix);
    if (vision) {
      p.trainable = !o.freeze_backbone;
    } else if (mlp) {
      p.trainable = !o.freeze_mlp;
    } else {
      p.trainable = !o.freeze_llm || (head && o.unfreeze_lm_head);
    }
    if (lora && absl::StartsWith(p.name, "language_model.")) p.trainable = false;  // PEFT freezes the base
    p.decay = UsesWeightDecay(m->config, p.name);
    p.tensor.requires_grad_(p.trainable);
  }
  if (lora) {
    m->lora_scale = 2.0;  // alpha / r with alpha = 2r
    INTERNVL_RETURN_IF_ERROR(TorchGuard("adding LoRA adapters", [&] {
      at::NoGradGuard no_grad;
      at::manual_seed(o.seed);
      for (const auto& item : m->lm->module()->named_modules()) {
        auto dense = std::dynamic_pointer_cast<llm::DenseImpl>(item.value());
        const std::string name = absl::StrCat("language_model.", item.key());
        if (dense == nullptr || !IsLoraTarget(m->config.llm.arch, name)) continue;
        const int64_t out = dense->weight.size(0), in = dense->weight.size(1);
        LoraAdapter l{name, dense, dense->weight, {}, {}};
        // kaiming_uniform_(a=sqrt(5)) on [r, in]: bound 1/sqrt(in).
        const double bound = 1.0 / std::sqrt(static_cast<double>(in));
        const auto opts = at::TensorOptions().dtype(at::kFloat).device(m->device);
        l.a = at::empty({o.lora_rank, in}, opts).uniform_(-bound, bound).requires_grad_(true);
        l.b = at::zeros({out, o.lora_rank}, opts).requires_grad_(true);
        m->params.push_back(Param{name + ".lora_A.weight", l.a, true, true, true});
        m->params.push_back(Param{name + ".lora_B.weight", l.b, true, true, true});
        m->lora.push_back(std::move(l));
      }
    }));
  }
  if (!resume_dir.empty() && lora) {
    INTERNVL_ASSIGN_OR_RETURN(auto ck, TensorStore::OpenDir(resume_dir));
    INTERNVL_RETURN_IF_ERROR(OverwriteFrom(
        *ck, m->params, [](const Param& p) { return !p.adapter && !absl::StartsWith(p.name, "language_model."); }));
    INTERNVL_ASSIGN_OR_RETURN(auto adapters, TensorStore::OpenFiles({(fs::path(resume_dir) / kLoraFile).string()}));
    INTERNVL_RETURN_IF_ERROR(OverwriteFrom(*adapters, m->params, [](const Param& p) { return p.adapter; }));
  }
  return m;
}

// ---------------------------------------------------------------------------
// Gradient checkpointing: a decoder layer whose activations are not kept;
// backward recomputes the layer's forward from its saved input (PyTorch's
// reentrant torch.utils.checkpoint).
llm::LayerContext MakeContext(const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& masked) {
  llm::LayerContext ctx;
  ctx.cos = cos;
  ctx.sin = sin;
  ctx.masked = masked;
  return ctx;
}

class CheckpointedLayer : public torch::autograd::Function<CheckpointedLayer> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& cos,
                            const at::Tensor& sin, const at::Tensor& masked, int64_t layer_address) {
    ctx->saved_data["layer"] = layer_address;
    ctx->saved_data["autocast"] = torch_compat::AutocastEnabled(x.device().type());
    ctx->save_for_backward({x, cos, sin, masked});
    auto* layer = reinterpret_cast<llm::DecoderLayerImpl*>(static_cast<intptr_t>(layer_address));
    // The same (grad-mode) arithmetic as the recomputation in backward and
    // as an uncheckpointed layer: with grad off the modules take inference
    // shortcuts (fused projections, decode kernels) that round differently.
    // The layer's graph is dropped as soon as this returns.
    at::AutoGradMode same_path(true);
    return layer->forward(x.detach(), MakeContext(cos, sin, masked)).detach();
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    auto saved = ctx->get_saved_variables();
    auto* layer = reinterpret_cast<llm::DecoderLayerImpl*>(static_cast<intptr_t>(ctx->saved_data["layer"].toInt()));
    const bool autocast = ctx->saved_data["autocast"].toBool();
    at::Tensor x = saved[0].detach().requires_grad_(true);
    at::Tensor out;
    {
      at::AutoGradMode enable(true);
      const c10::DeviceType type = x.device().type();
      const bool was = torch_compat::AutocastEnabled(type);
      torch_compat::SetAutocast(type, autocast, at::kBFloat16);
      out = layer->forward(x, MakeContext(saved[1], saved[2], saved[3]));
      torch_compat::SetAutocast(type, was, at::kBFloat16);
    }
    torch::autograd::backward({out}, {grad_out[0]});
    return {x.grad(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// ---------------------------------------------------------------------------
// Loss of one micro-batch.

at::Tensor I64Tensor(const std::vector<int64_t>& v, std::vector<int64_t> shape) {
  return at::tensor(v, at::TensorOptions().dtype(at::kLong)).view(shape);
}

// Per shifted position weights [B, L-1] (0 where the label is ignored):
// "token" 1, "sample" 1/n, "square" 1/sqrt(n), with n = the sample's
// supervised tokens (InternVL's loss_reduction).
at::Tensor TokenWeights(const at::Tensor& shift_labels, const std::string& reduction) {
  at::Tensor valid = shift_labels.ne(kIgnoreIndex).to(at::kFloat);  // [B, L-1]
  if (reduction == "token") return valid;
  at::Tensor n = valid.sum(1, /*keepdim=*/true).clamp_min(1.0);
  at::Tensor w = reduction == "sample" ? n.reciprocal() : n.rsqrt();
  return valid * w;
}

// Σ_i w_i * CE_i over the micro-batch (graph attached), plus the batch's
// weight sum (detached). Mirrors InternVLChatModel.forward: embed, run the
// ViT on every tile, keep image_flags == 1, put the rows into the
// <IMG_CONTEXT> slots, causal LM with the collator's attention mask and the
// dataset's position ids, CE of logits[:, :-1] against labels[:, 1:].
absl::StatusOr<at::Tensor> MicroBatchLossSum(TrainModel& m, const Batch& b, const TrainOptions& o,
                                             std::string* warning) {
  return TorchGuard("training forward", [&]() -> absl::StatusOr<at::Tensor> {
    const int64_t B = b.batch_size, L = b.seq_len;
    const c10::Device dev = m.device;
    at::Tensor ids = I64Tensor(b.input_ids, {B, L}).to(dev);
    at::Tensor labels = I64Tensor(b.labels, {B, L}).to(dev);
    at::Tensor positions = I64Tensor(b.position_ids, {B, L}).to(dev);
    at::Tensor mask = at::tensor(std::vector<int64_t>(b.attention_mask.begin(), b.attention_mask.end()),
                                 at::TensorOptions().dtype(at::kLong))
                          .view({B, L})
                          .to(dev)
                          .ne(0);
    auto& lm = m.lm->module();
    at::Tensor embeds = at::embedding(lm->model->embed->weight, ids, m.embed_padding_idx);
    if (!b.pixel_values.empty()) {
      at::Tensor px = HostToTensor(b.pixel_values);
      INTERNVL_ASSIGN_OR_RETURN(at::Tensor vit, ExtractFeatureForTraining(*m.vision, px, !o.freeze_backbone));
      at::Tensor flags = I64Tensor(b.image_flags, {static_cast<int64_t>(b.image_flags.size())}).to(dev);
      vit = vit.index({flags.eq(1)});
      const int64_t hidden = embeds.size(2);
      at::Tensor rows = vit.reshape({-1, hidden});
      at::Tensor selected = ids.eq(m.img_context_id);
      const int64_t slots = selected.sum().item<int64_t>();
      if (rows.size(0) > slots) {
        // The official forward's fallback when truncation cut image tokens:
        // the first `slots` rows are used.
        *warning = absl::StrCat("image tokens truncated by max_seq_length: ", slots, " slots for ", rows.size(0),
                                " image embedding rows; using the first ", slots);
        rows = rows.narrow(0, 0, slots);
      } else if (rows.size(0) < slots) {
        return absl::InternalError(absl::StrCat("batch has ", slots, " <IMG_CONTEXT> tokens but only ", rows.size(0),
                                                " image embedding rows"));
      }
      embeds = embeds.index_put({selected}, rows);
    }
    at::Tensor cos, sin;
    std::tie(cos, sin) = m.lm->rotary().Tables(positions, at::kFloat);
    const auto long_opts = at::TensorOptions().dtype(at::kLong).device(dev);
    at::Tensor causal = at::arange(L, long_opts).view({1, 1, L}).gt(at::arange(L, long_opts).view({1, L, 1}));
    at::Tensor masked = causal.logical_or(mask.logical_not().unsqueeze(1)).unsqueeze(1).unsqueeze(1);

    const bool autocast = o.dtype == "bf16";
    torch_compat::SetAutocast(dev.type(), autocast, at::kBFloat16);
    at::Tensor x = embeds;
    // A checkpointed layer only builds a graph when its input needs a
    // gradient (HF's enable_input_require_grads for a frozen embedding).
    if (o.gradient_checkpointing && !x.requires_grad()) x = x.detach().requires_grad_(true);
    for (auto& layer : lm->model->typed_layers) {
      if (o.gradient_checkpointing) {
        x = CheckpointedLayer::apply(x, cos, sin, masked,
                                     static_cast<int64_t>(reinterpret_cast<intptr_t>(layer.get())));
      } else {
        x = layer->forward(x, MakeContext(cos, sin, masked));
      }
    }
    x = lm->model->norm->forward(x);
    at::Tensor logits = lm->head->forward(x).to(at::kFloat);
    torch_compat::SetAutocast(dev.type(), false, at::kBFloat16);
    if (autocast) at::autocast::clear_cache();

    const int64_t V = logits.size(2);
    at::Tensor shift_logits = logits.narrow(1, 0, L - 1).reshape({-1, V});
    at::Tensor shift_labels = labels.narrow(1, 1, L - 1);
    at::Tensor weights = TokenWeights(shift_labels, o.loss_reduction).reshape(-1);
    at::Tensor ce =
        at::cross_entropy_loss(shift_logits, shift_labels.reshape(-1), {}, at::Reduction::None, kIgnoreIndex);
    return (ce * weights).sum();
  });
}

// ---------------------------------------------------------------------------
// AdamW exactly as torch.optim.AdamW's single-tensor path (CPU default):
//   p *= 1 - lr*wd; m = lerp(m, g, 1-b1); v = b2*v + (1-b2)*g*g;
//   p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps).
// Parameters without a gradient this step are skipped (no decay, no moment
// update), as torch does.
struct AdamState {
  at::Tensor exp_avg, exp_avg_sq;
  int64_t step = 0;
};

void AdamWStep(const TrainOptions& o, double lr, std::vector<Param>& params, std::map<std::string, AdamState>& state) {
  at::NoGradGuard no_grad;
  for (Param& p : params) {
    if (!p.trainable || !p.tensor.grad().defined()) continue;
    AdamState& s = state[p.name];
    if (!s.exp_avg.defined()) {
      s.exp_avg = at::zeros_like(p.tensor);
      s.exp_avg_sq = at::zeros_like(p.tensor);
    }
    s.step += 1;
    const at::Tensor& g = p.tensor.grad();
    const double wd = p.decay ? o.weight_decay : 0.0;
    p.tensor.mul_(1.0 - lr * wd);
    s.exp_avg.lerp_(g, 1.0 - o.adam_beta1);
    s.exp_avg_sq.mul_(o.adam_beta2).addcmul_(g, g, 1.0 - o.adam_beta2);
    const double bc1 = 1.0 - std::pow(o.adam_beta1, static_cast<double>(s.step));
    const double bc2 = 1.0 - std::pow(o.adam_beta2, static_cast<double>(s.step));
    const double step_size = lr / bc1;
    at::Tensor denom = (s.exp_avg_sq.sqrt() / std::sqrt(bc2)).add_(o.adam_eps);
    p.tensor.addcdiv_(s.exp_avg, denom, -step_size);
  }
}

// get_cosine_schedule_with_warmup (num_cycles 0.5) at 0-based step k.
double LearningRate(const TrainOptions& o, int64_t k, int64_t warmup, int64_t total) {
  if (k < warmup) return o.lr * static_cast<double>(k) / static_cast<double>(std::max<int64_t>(1, warmup));
  const double progress = static_cast<double>(k - warmup) / static_cast<double>(std::max<int64_t>(1, total - warmup));
  return o.lr * std::max(0.0, 0.5 * (1.0 + std::cos(M_PI * 2.0 * 0.5 * progress)));
}

// torch.nn.utils.clip_grad_norm_: total L2 norm over every gradient, then
// grads *= min(1, max_norm / (norm + 1e-6)). Returns the norm before clipping.
double ClipGradNorm(std::vector<Param>& params, double max_norm) {
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> norms, grads;
  for (Param& p : params) {
    if (p.trainable && p.tensor.grad().defined()) {
      grads.push_back(p.tensor.grad());
      norms.push_back(at::linalg_vector_norm(p.tensor.grad(), 2));
    }
  }
  if (grads.empty()) return 0.0;
  at::Tensor total = at::linalg_vector_norm(at::stack(norms), 2);
  if (max_norm > 0) {
    at::Tensor coef = (max_norm / (total + 1e-6)).clamp_max(1.0);
    for (at::Tensor& g : grads) g.mul_(coef);
  }
  return total.item<double>();
}

// ---------------------------------------------------------------------------
// Checkpoints.

constexpr char kTrainerState[] = "trainer_state.json";
constexpr char kOptimizerFile[] = "optimizer.safetensors";
constexpr char kModelFile[] = "model.safetensors";

bool IsWeightFile(const std::string& name) {
  return absl::EndsWith(name, ".safetensors") || absl::EndsWith(name, ".safetensors.index.json") ||
         absl::EndsWith(name, ".bin") || absl::EndsWith(name, ".bin.index.json") || absl::EndsWith(name, ".pt") ||
         name == kTrainerState;
}

absl::Status WriteTensors(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                          const std::map<std::string, std::string>& metadata = {}) {
  std::vector<at::Tensor> keep;
  std::vector<TensorRef> refs;
  INTERNVL_RETURN_IF_ERROR(TorchGuard("preparing tensors to save", [&]() -> absl::Status {
    for (const auto& [name, t] : tensors) {
      at::Tensor c = t.detach().to(at::kCPU).contiguous();
      INTERNVL_ASSIGN_OR_RETURN(DType dtype, FromScalarType(c.scalar_type()));
      keep.push_back(c);
      refs.push_back(TensorRef{name, dtype, c.sizes().vec(),
                               absl::Span<const uint8_t>(static_cast<const uint8_t*>(c.data_ptr()), c.nbytes())});
    }
    return absl::OkStatus();
  }));
  return WriteSafetensors(path, refs, metadata);
}

// The model folder inference loads: every weight in model.safetensors (fp32,
// as trained), config.json, tokenizer and generation files of the source.
absl::Status SaveModel(const TrainModel& m, const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  std::map<std::string, at::Tensor> merged;  // LoRA: base weight name -> W + scale B A
  INTERNVL_RETURN_IF_ERROR(TorchGuard("merging LoRA adapters", [&] {
    at::NoGradGuard no_grad;
    for (const LoraAdapter& l : m.lora) merged[l.name + ".weight"] = l.base + m.lora_scale * l.b.mm(l.a);
  }));
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const Param& p : m.params) {
    if (p.adapter) continue;
    auto it = merged.find(p.name);
    tensors.emplace_back(p.name, it != merged.end() ? it->second : p.tensor);
  }
  INTERNVL_RETURN_IF_ERROR(WriteTensors((fs::path(dir) / kModelFile).string(), tensors, {{"format", "pt"}}));
  for (const auto& entry : fs::directory_iterator(m.source_dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (!entry.is_regular_file() || IsWeightFile(name)) continue;
    // Read and written whole (fsynced), as the weights: a checkpoint is durable once renamed.
    INTERNVL_ASSIGN_OR_RETURN(std::string bytes, ReadFile(entry.path().string()));
    INTERNVL_RETURN_IF_ERROR(WriteFileAtomic((fs::path(dir) / name).string(), bytes));
  }
  if (ec) return absl::InternalError(absl::StrCat("cannot list ", m.source_dir, ": ", ec.message()));
  return absl::OkStatus();
}

struct Progress {
  int64_t step = 0;             // optimizer steps done
  int64_t skipped_records = 0;  // this rank's
  json log_history = json::array();
};

json OptionsJson(const TrainOptions& o) {
  return json{{"model", o.model},
              {"meta", o.meta},
              {"conv_style", o.conv_style},
              {"max_seq_length", o.max_seq_length},
              {"max_dynamic_patch", o.max_dynamic_patch},
              {"min_dynamic_patch", o.min_dynamic_patch},
              {"lr", o.lr},
              {"weight_decay", o.weight_decay},
              {"warmup_ratio", o.warmup_ratio},
              {"max_grad_norm", o.max_grad_norm},
              {"max_steps", o.max_steps},
              {"epochs", o.epochs},
              {"batch_size", o.batch_size},
              {"grad_accum", o.grad_accum},
              {"loss_reduction", o.loss_reduction},
              {"dtype", o.dtype},
              {"gradient_checkpointing", o.gradient_checkpointing},
              {"shuffle", o.shuffle},
              {"seed", o.seed},
              {"freeze_backbone", o.freeze_backbone},
              {"freeze_llm", o.freeze_llm},
              {"freeze_mlp", o.freeze_mlp},
              {"unfreeze_lm_head", o.unfreeze_lm_head},
              {"lora_rank", o.lora_rank},
              {"world_size", o.world_size}};
}

json TrainerStateJson(const TrainModel& m, const TrainOptions& o, const Progress& p, int64_t total_steps,
                      double epoch) {
  json trainable = json::array(), decay = json::array(), no_decay = json::array();
  for (const Param& q : m.params) {
    if (!q.trainable) continue;
    trainable.push_back(q.name);
    (q.decay ? decay : no_decay).push_back(q.name);
  }
  return json{{"global_step", p.step},
              {"max_steps", total_steps},
              {"epoch", epoch},
              {"skipped_records", p.skipped_records},
              {"log_history", p.log_history},
              {"options", OptionsJson(o)},
              {"trainable_parameters", trainable},
              {"weight_decay_parameters", decay},
              {"no_weight_decay_parameters", no_decay}};
}

absl::Status SaveTrainerState(const TrainModel& m, const TrainOptions& o, const Progress& p, int64_t total_steps,
                              double epoch, const std::map<std::string, AdamState>& adam, const std::string& dir) {
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  json steps = json::object();
  for (const auto& [name, s] : adam) {
    if (!s.exp_avg.defined()) continue;
    tensors.emplace_back("exp_avg/" + name, s.exp_avg);
    tensors.emplace_back("exp_avg_sq/" + name, s.exp_avg_sq);
    steps[name] = s.step;
  }
  INTERNVL_RETURN_IF_ERROR(
      WriteTensors((fs::path(dir) / kOptimizerFile).string(), tensors, {{"adam_steps", steps.dump()}}));
  if (!m.lora.empty()) {
    std::vector<std::pair<std::string, at::Tensor>> adapters;
    for (const Param& q : m.params)
      if (q.adapter) adapters.emplace_back(q.name, q.tensor);
    INTERNVL_RETURN_IF_ERROR(WriteTensors((fs::path(dir) / kLoraFile).string(), adapters));
  }
  return WriteFileAtomic((fs::path(dir) / kTrainerState).string(),
                         TrainerStateJson(m, o, p, total_steps, epoch).dump(1));
}

absl::Status LoadOptimizerState(const std::string& dir, const TrainModel& m, std::map<std::string, AdamState>& adam) {
  INTERNVL_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open((fs::path(dir) / kOptimizerFile).string()));
  auto it = file->metadata().find("adam_steps");
  if (it == file->metadata().end())
    return absl::InvalidArgumentError(absl::StrCat(file->path(), " has no adam_steps metadata"));
  const json steps = json::parse(it->second, nullptr, /*allow_exceptions=*/false);
  if (!steps.is_object()) return absl::InvalidArgumentError(absl::StrCat(file->path(), ": malformed adam_steps"));
  return TorchGuard("loading the optimizer state", [&]() -> absl::Status {
    for (const Param& p : m.params) {
      if (!p.trainable || !steps.contains(p.name)) continue;
      const TensorView* a = file->Find("exp_avg/" + p.name);
      const TensorView* v = file->Find("exp_avg_sq/" + p.name);
      if (a == nullptr || v == nullptr)
        return absl::InvalidArgumentError(absl::StrCat(file->path(), " lacks the moments of ", p.name));
      AdamState s;
      s.exp_avg = TensorFromView(*a, at::kFloat).to(p.tensor.device());
      s.exp_avg_sq = TensorFromView(*v, at::kFloat).to(p.tensor.device());
      s.step = steps[p.name].get<int64_t>();
      if (s.exp_avg.sizes() != p.tensor.sizes())
        return absl::InvalidArgumentError(absl::StrCat(file->path(), ": moment shape mismatch for ", p.name));
      adam[p.name] = std::move(s);
    }
    return absl::OkStatus();
  });
}

// A checkpoint being written (renamed to checkpoint-N once complete).
constexpr char kPartialSuffix[] = ".partial";

// checkpoint-N folders of `output_dir`, by N (complete ones only: a
// checkpoint-N.partial does not parse as N).
std::vector<std::pair<int64_t, std::string>> ListCheckpoints(const std::string& output_dir) {
  std::vector<std::pair<int64_t, std::string>> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(output_dir, ec)) {
    const std::string name = e.path().filename().string();
    int64_t n = 0;
    if (e.is_directory() && absl::StartsWith(name, "checkpoint-") &&
        absl::SimpleAtoi(absl::string_view(name).substr(11), &n))
      out.emplace_back(n, e.path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// ---------------------------------------------------------------------------
// The sample stream: global sample g -> record (epoch g / N, shuffled per
// epoch with seed + epoch when asked). Step s, micro-batch a, rank r, slot j
// reads g = ((s * A + a) * W + r) * B + j, so W ranks with batch B see exactly
// the samples one process with batch W*B sees.
class SampleStream {
 public:
  SampleStream(size_t n, bool shuffle, uint64_t seed) : n_(n), shuffle_(shuffle), seed_(seed) {}
  size_t Record(int64_t g) {
    const int64_t epoch = g / static_cast<int64_t>(n_);
    const size_t pos = static_cast<size_t>(g % static_cast<int64_t>(n_));
    if (!shuffle_) return pos;
    if (epoch != perm_epoch_) {
      perm_.resize(n_);
      std::iota(perm_.begin(), perm_.end(), size_t{0});
      std::mt19937_64 rng(seed_ + static_cast<uint64_t>(epoch));
      for (size_t i = n_; i > 1; --i) std::swap(perm_[i - 1], perm_[rng() % i]);
      perm_epoch_ = epoch;
    }
    return perm_[pos];
  }

 private:
  size_t n_;
  bool shuffle_;
  uint64_t seed_;
  int64_t perm_epoch_ = -1;
  std::vector<size_t> perm_;
};

}  // namespace

bool UsesWeightDecay(const InternVLConfig& config, absl::string_view name) {
  if (absl::StrContains(name, "bias")) return false;
  return !IsLayerNormParam(config, name);
}

absl::Status ValidateTrainOptions(const TrainOptions& o) {
  auto bad = [](absl::string_view what) { return absl::InvalidArgumentError(what); };
  if (o.model.empty()) return bad("model is required");
  if (o.meta.empty()) return bad("meta (the dataset meta JSON) is required");
  if (o.output_dir.empty()) return bad("output_dir is required");
  INTERNVL_RETURN_IF_ERROR(ParseDevice(o.device).status());
  if (!(o.lr >= 0 && std::isfinite(o.lr))) return bad("lr must be a finite number >= 0");
  if (!(o.weight_decay >= 0)) return bad("weight_decay must be >= 0");
  if (!(o.warmup_ratio >= 0 && o.warmup_ratio <= 1)) return bad("warmup_ratio must be in [0, 1]");
  if (!(o.max_grad_norm >= 0)) return bad("max_grad_norm must be >= 0 (0 disables clipping)");
  if (!(o.adam_beta1 >= 0 && o.adam_beta1 < 1 && o.adam_beta2 >= 0 && o.adam_beta2 < 1 && o.adam_eps > 0))
    return bad("adam betas must be in [0, 1) and eps > 0");
  if (o.max_steps <= 0 && !(o.epochs > 0)) return bad("give max_steps > 0 or epochs > 0");
  if (o.batch_size < 1) return bad("batch_size must be >= 1");
  if (o.grad_accum < 1) return bad("grad_accum must be >= 1");
  if (o.max_seq_length < 2) return bad("max_seq_length must be >= 2");
  if (o.min_dynamic_patch < 1 || o.max_dynamic_patch < o.min_dynamic_patch)
    return bad("need 1 <= min_dynamic_patch <= max_dynamic_patch");
  if (o.loss_reduction != "token" && o.loss_reduction != "sample" && o.loss_reduction != "square")
    return bad(absl::StrCat("loss_reduction must be token, sample or square, got '", o.loss_reduction, "'"));
  if (o.dtype != "fp32" && o.dtype != "bf16")
    return bad(absl::StrCat("dtype must be fp32 or bf16, got '", o.dtype, "'"));
  if (!o.conv_style.empty() && !tokenizer::GetTemplate(o.conv_style).ok())
    return tokenizer::GetTemplate(o.conv_style).status();
  if (o.lora_rank < 0) return bad("lora_rank must be >= 0");
  if (o.save_steps < 0 || o.save_total_limit < 0) return bad("save_steps and save_total_limit must be >= 0");
  if (o.world_size < 1 || o.rank < 0 || o.rank >= o.world_size) return bad("need 0 <= rank < world_size");
  if (o.world_size > 1 && (o.master_port < 1 || o.master_port > 65535)) return bad("master_port must be 1-65535");
  if (o.logging_steps < 1) return bad("logging_steps must be >= 1");
  if (o.freeze_backbone && o.freeze_llm && o.freeze_mlp && !o.unfreeze_lm_head && o.lora_rank == 0)
    return bad("everything is frozen: nothing to train");
  return absl::OkStatus();
}

absl::Status ValidateTrainInputs(const TrainOptions& o) {
  INTERNVL_RETURN_IF_ERROR(ValidateTrainOptions(o));
  absl::StatusOr<std::string> dir = ResolveModelPath(o.model);
  if (dir.ok()) {
    absl::StatusOr<InternVLConfig> config = LoadInternVLConfig(*dir);
    if (!config.ok())
      return absl::InvalidArgumentError(absl::StrCat("model ", o.model, ": ", config.status().message()));
    const std::string style = o.conv_style.empty() ? config->template_name : o.conv_style;
    INTERNVL_RETURN_IF_ERROR(tokenizer::GetTemplate(style).status());
  } else if (!ParseHfModelId(o.model).ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("model ", o.model, " is neither a model folder nor a Hugging Face id: ", dir.status().message()));
  }
  return LoadMeta(o.meta).status();
}

absl::Status RunTraining(const TrainOptions& options, const TrainEventCallback& on_event,
                         const std::atomic<bool>* cancel) {
  INTERNVL_RETURN_IF_ERROR(ValidateTrainOptions(options));
  TrainOptions o = options;
  SetTorchThreads(o.threads);
  INTERNVL_ASSIGN_OR_RETURN(auto dist, Distributed::Create(o));
  const bool lead = dist->rank() == 0;
  auto emit = [&](TrainEvent e) {
    if (lead && on_event) on_event(e);
  };

  // Resume: weights, optimizer and position come from the checkpoint.
  std::string resume_dir;
  if (o.resume_from == "auto") {
    auto cks = ListCheckpoints(o.output_dir);
    if (!cks.empty()) resume_dir = cks.back().second;
  } else if (!o.resume_from.empty()) {
    resume_dir = o.resume_from;
    if (!fs::exists(fs::path(resume_dir) / kTrainerState))
      return absl::NotFoundError(absl::StrCat("--resume ", resume_dir, ": no ", kTrainerState, " there"));
  }
  if (lead) {  // what a killed run left half-written
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(o.output_dir, ec)) {
      if (e.is_directory() && absl::EndsWith(e.path().filename().string(), kPartialSuffix)) {
        std::error_code rm;
        fs::remove_all(e.path(), rm);
      }
    }
  }
  INTERNVL_ASSIGN_OR_RETURN(auto model, LoadTrainModel(o, resume_dir));
  TrainModel& m = *model;
  if (o.conv_style.empty()) o.conv_style = m.config.template_name;

  DataOptions data;
  data.conv_style = o.conv_style;
  data.num_image_token = m.config.num_image_token();
  data.image_size = m.config.image_size();
  data.min_dynamic_patch = o.min_dynamic_patch;
  data.max_dynamic_patch = o.max_dynamic_patch;
  data.dynamic_image_size = o.dynamic_image_size;
  data.use_thumbnail = o.use_thumbnail;
  data.max_seq_length = o.max_seq_length;
  data.seed = o.seed;
  data.data_root = o.data_root;
  INTERNVL_ASSIGN_OR_RETURN(auto dataset, SftDataset::Open(o.meta, *m.tokenizer, data));
  const size_t n = dataset->size();
  if (n == 0) return absl::InvalidArgumentError(absl::StrCat(o.meta, ": the datasets hold no records"));

  const int64_t B = o.batch_size, A = o.grad_accum, W = dist->world();
  const int64_t per_step = B * A * W;
  const int64_t total_steps =
      o.max_steps > 0
          ? o.max_steps
          : std::max<int64_t>(
                1, static_cast<int64_t>(std::ceil(o.epochs * static_cast<double>(n) / static_cast<double>(per_step))));
  const int64_t warmup = static_cast<int64_t>(std::ceil(static_cast<double>(total_steps) * o.warmup_ratio));

  Progress progress;
  std::map<std::string, AdamState> adam;
  if (!resume_dir.empty()) {
    INTERNVL_ASSIGN_OR_RETURN(std::string text, ReadFile((fs::path(resume_dir) / kTrainerState).string()));
    json st = json::parse(text, nullptr, false);
    if (!st.is_object() || !st.contains("global_step"))
      return absl::InvalidArgumentError(absl::StrCat(resume_dir, "/", kTrainerState, " is malformed"));
    const json& so = st["options"];
    if (so.value("batch_size", -1) * so.value("grad_accum", -1) * so.value("world_size", -1) != per_step) {
      return absl::FailedPreconditionError(absl::StrCat(
          "cannot resume ", resume_dir,
          " with a different global batch (batch_size x grad_accum x world_size = ", per_step, ", the checkpoint used ",
          so.value("batch_size", -1) * so.value("grad_accum", -1) * so.value("world_size", -1),
          "): the sample order would change"));
    }
    progress.step = st["global_step"].get<int64_t>();
    progress.log_history = st.value("log_history", json::array());
    progress.skipped_records = st.value("skipped_records", int64_t{0});
    INTERNVL_RETURN_IF_ERROR(LoadOptimizerState(resume_dir, m, adam));
  }

  int64_t trainable = 0, total_params = 0;
  for (const Param& p : m.params) {
    total_params += p.tensor.numel();
    if (p.trainable) trainable += p.tensor.numel();
  }
  {
    TrainEvent e;
    e.kind = TrainEvent::Kind::kStarted;
    e.step = progress.step;
    e.total_steps = total_steps;
    e.message = absl::StrCat(n, " records, ", total_steps, " steps of ", per_step, " samples (batch ", B, " x accum ",
                             A, " x ranks ", W, "), warmup ", warmup, ", ", trainable, " of ", total_params,
                             " parameters trainable, conv_style ", o.conv_style,
                             resume_dir.empty() ? "" : absl::StrCat(", resumed from ", resume_dir));
    emit(e);
  }

  for (const std::string& notice : dataset->notices()) {
    TrainEvent e;
    e.kind = TrainEvent::Kind::kWarning;
    e.total_steps = total_steps;
    e.message = notice;
    emit(e);
  }
  SampleStream stream(n, o.shuffle, o.seed);
  std::set<size_t> warned_bad, warned_masked;
  // Sample g of the stream; a bad record's slot is filled by the next
  // readable record (the official code substitutes a random one silently).
  auto load_sample = [&](int64_t g) -> absl::StatusOr<Sample> {
    size_t rec = stream.Record(g);
    for (size_t tries = 0; tries < n; ++tries) {
      absl::StatusOr<Sample> s = dataset->Get(rec);
      if (s.ok()) {
        if (s->fully_masked && warned_masked.insert(rec).second) {
          TrainEvent e;
          e.kind = TrainEvent::Kind::kWarning;
          e.step = progress.step;
          e.total_steps = total_steps;
          e.message = absl::StrCat(dataset->SourceOf(rec), ": ",
                                   s->warning.empty() ? "tokenization mismatch, sample fully masked" : s->warning);
          emit(e);
        }
        return s;
      }
      if (warned_bad.insert(rec).second) {
        progress.skipped_records++;
        TrainEvent e;
        e.kind = TrainEvent::Kind::kWarning;
        e.step = progress.step;
        e.total_steps = total_steps;
        e.skipped_records = progress.skipped_records;
        e.message = absl::StrCat("skipping bad record ", dataset->SourceOf(rec), ": ", s.status().message());
        emit(e);
      }
      rec = (rec + 1) % n;
    }
    return absl::InvalidArgumentError(absl::StrCat(o.meta, ": no readable record"));
  };

  SetVisionTraining(*m.vision, !o.freeze_backbone);
  m.lm->module()->train(true);
  const auto start = std::chrono::steady_clock::now();
  for (int64_t step = progress.step; step < total_steps; ++step) {
    const auto t0 = std::chrono::steady_clock::now();
    // Build this rank's micro-batches first: the loss is normalised by the
    // weight of the WHOLE step over all ranks and micro-batches.
    std::vector<Batch> micro;
    double local_weight = 0;
    for (int64_t a = 0; a < A; ++a) {
      std::vector<Sample> samples;
      for (int64_t j = 0; j < B; ++j) {
        const int64_t g = ((step * A + a) * W + dist->rank()) * B + j;
        INTERNVL_ASSIGN_OR_RETURN(Sample s, load_sample(g));
        samples.push_back(std::move(s));
      }
      micro.push_back(Collate(samples, 0));
      INTERNVL_ASSIGN_OR_RETURN(at::Tensor w, TorchGuard("counting labels", [&] {
                                  const Batch& b = micro.back();
                                  return TokenWeights(
                                             I64Tensor(b.labels, {b.batch_size, b.seq_len}).narrow(1, 1, b.seq_len - 1),
                                             o.loss_reduction)
                                      .sum();
                                }));
      local_weight += w.item<double>();
    }
    const bool cancelled_here = cancel != nullptr && cancel->load();
    at::Tensor head = at::tensor({local_weight, cancelled_here ? 1.0 : 0.0}, at::TensorOptions().dtype(at::kDouble));
    INTERNVL_RETURN_IF_ERROR(dist->AllReduceSum({head}));
    if (head[1].item<double>() > 0) return absl::CancelledError("training cancelled");
    const double weight = head[0].item<double>();
    if (weight == 0) {
      TrainEvent e;
      e.kind = TrainEvent::Kind::kWarning;
      e.step = step;
      e.total_steps = total_steps;
      e.message = absl::StrCat("step ", step + 1, " has no supervised token (all labels masked)");
      emit(e);
    }

    for (Param& p : m.params) p.tensor.mutable_grad() = at::Tensor();  // zero_grad(set_to_none=True)
    double loss_sum = 0;
    INTERNVL_RETURN_IF_ERROR(TorchGuard("merging LoRA adapters", [&] { m.MergeLora(); }));
    for (const Batch& b : micro) {
      if (cancel != nullptr && cancel->load() && W == 1) return absl::CancelledError("training cancelled");
      std::string warning;
      INTERNVL_ASSIGN_OR_RETURN(at::Tensor sum, MicroBatchLossSum(m, b, o, &warning));
      if (!warning.empty()) {
        TrainEvent e;
        e.kind = TrainEvent::Kind::kWarning;
        e.step = step;
        e.message = warning;
        emit(e);
      }
      INTERNVL_RETURN_IF_ERROR(TorchGuard("training backward", [&] {
        (sum / std::max(weight, 1e-12)).backward();
        loss_sum += sum.item<double>();
      }));
    }
    m.UnmergeLora();
    // Gradients (already divided by the global weight) summed over ranks.
    std::vector<at::Tensor> grads;
    for (Param& p : m.params) {
      if (p.trainable && p.tensor.grad().defined()) grads.push_back(p.tensor.grad());
    }
    INTERNVL_RETURN_IF_ERROR(dist->AllReduceSum(grads));
    at::Tensor loss_t = at::tensor({loss_sum}, at::TensorOptions().dtype(at::kDouble));
    INTERNVL_RETURN_IF_ERROR(dist->AllReduceSum({loss_t}));
    const double loss = weight > 0 ? loss_t.item<double>() / weight : 0.0;

    const double lr = LearningRate(o, step, warmup, total_steps);
    INTERNVL_ASSIGN_OR_RETURN(
        double grad_norm, TorchGuard("clipping gradients", [&] { return ClipGradNorm(m.params, o.max_grad_norm); }));
    INTERNVL_RETURN_IF_ERROR(TorchGuard("optimizer step", [&] { AdamWStep(o, lr, m.params, adam); }));
    progress.step = step + 1;

    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double epoch = static_cast<double>(progress.step * per_step) / static_cast<double>(n);
    progress.log_history.push_back(json{
        {"step", progress.step}, {"loss", loss}, {"learning_rate", lr}, {"grad_norm", grad_norm}, {"epoch", epoch}});
    if (progress.step % o.logging_steps == 0 || progress.step == total_steps) {
      TrainEvent e;
      e.kind = TrainEvent::Kind::kStep;
      e.step = progress.step;
      e.total_steps = total_steps;
      e.epoch = epoch;
      e.loss = loss;
      e.lr = lr;
      e.grad_norm = grad_norm;
      e.samples_per_second = secs > 0 ? static_cast<double>(per_step) / secs : 0;
      e.skipped_records = progress.skipped_records;
      emit(e);
    }

    const bool final_step = progress.step == total_steps;
    if (o.save_steps > 0 && progress.step % o.save_steps == 0 && !final_step) {
      const std::string dir = (fs::path(o.output_dir) / absl::StrCat("checkpoint-", progress.step)).string();
      if (lead) {
        // Written whole under a temporary name, then renamed: a kill at any
        // moment leaves the previous checkpoints and maybe a .partial folder
        // (ignored, removed at the next start), never a broken checkpoint-N.
        const std::string partial = dir + kPartialSuffix;
        std::error_code ec;
        fs::remove_all(partial, ec);
        INTERNVL_RETURN_IF_ERROR(SaveModel(m, partial));
        INTERNVL_RETURN_IF_ERROR(SaveTrainerState(m, o, progress, total_steps, epoch, adam, partial));
        fs::remove_all(dir, ec);
        fs::rename(partial, dir, ec);
        if (ec) return absl::InternalError(absl::StrCat("cannot rename ", partial, " to ", dir, ": ", ec.message()));
        INTERNVL_RETURN_IF_ERROR(SyncDir(o.output_dir));
        if (o.save_total_limit > 0) {
          auto cks = ListCheckpoints(o.output_dir);
          for (size_t i = 0; i + o.save_total_limit < cks.size(); ++i) {
            std::error_code ec;
            fs::remove_all(cks[i].second, ec);
          }
        }
        TrainEvent e;
        e.kind = TrainEvent::Kind::kCheckpoint;
        e.step = progress.step;
        e.total_steps = total_steps;
        e.checkpoint_path = dir;
        emit(e);
      }
      INTERNVL_RETURN_IF_ERROR(dist->Barrier());
    }
  }

  // The final model in output_dir itself (HF Trainer's save_model), with the
  // trainer state so that --resume auto knows it is complete.
  const double epoch = static_cast<double>(progress.step * per_step) / static_cast<double>(n);
  if (lead) {
    INTERNVL_RETURN_IF_ERROR(SaveModel(m, o.output_dir));
    INTERNVL_RETURN_IF_ERROR(WriteFileAtomic((fs::path(o.output_dir) / kTrainerState).string(),
                                             TrainerStateJson(m, o, progress, total_steps, epoch).dump(1)));
  }
  INTERNVL_RETURN_IF_ERROR(dist->Barrier());
  TrainEvent e;
  e.kind = TrainEvent::Kind::kFinished;
  e.step = progress.step;
  e.total_steps = total_steps;
  e.epoch = epoch;
  e.skipped_records = progress.skipped_records;
  e.checkpoint_path = o.output_dir;
  e.message = absl::StrCat("finished in ",
                           std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), " s");
  emit(e);
  return absl::OkStatus();
}

}  // namespace internvl::train
