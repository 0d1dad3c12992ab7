#include "core/llm/causal_lm.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <mutex>
#include <string>
#include <tuple>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/files.h"
#include "core/llm/bf16_bits.h"
#include "core/llm/gemv.h"
#include "core/llm/gemv_kernels.h"
#include "core/llm/paged_attention.h"
#include "core/llm/quant.h"
#include "core/nn/torch_util.h"
#include "core/nn/weights.h"
#include "core/status.h"

namespace internvl::llm {
namespace {

std::string Shape(const at::Tensor& t) { return absl::StrCat("[", absl::StrJoin(t.sizes(), ","), "]"); }

// Every linear layer of the model (the vocabulary head included).
std::vector<DenseImpl*> DenseLayers(const LanguageModelImpl& module) {
  std::vector<DenseImpl*> out;
  for (const auto& m : module.modules(/*include_self=*/false)) {
    if (auto* d = dynamic_cast<DenseImpl*>(m.get())) out.push_back(d);
  }
  return out;
}

absl::Status CheckConfig(const LlmConfig& c) {
  if (c.hidden_size <= 0 || c.num_attention_heads <= 0 || c.num_key_value_heads <= 0 || c.num_hidden_layers <= 0 ||
      c.vocab_size <= 0 || c.intermediate_size <= 0) {
    return absl::InvalidArgumentError("LLM config: sizes must be positive");
  }
  if (c.hidden_size % c.num_attention_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("LLM config: hidden_size ", c.hidden_size,
                                                   " not divisible by num_attention_heads ", c.num_attention_heads));
  }
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("LLM config: num_attention_heads ", c.num_attention_heads,
                                                   " not divisible by num_key_value_heads ", c.num_key_value_heads));
  }
  if (c.head_dim() % 2 != 0) return absl::InvalidArgumentError("LLM config: head_dim must be even for RoPE");
  if (c.rope_scaling && c.rope_scaling->type != "linear" && c.rope_scaling->type != "dynamic") {
    return absl::InvalidArgumentError(
        absl::StrCat("LLM config: unsupported rope_scaling '", c.rope_scaling->type, "'"));
  }
  if (c.rope_scaling && c.rope_scaling->type == "dynamic" && c.max_position_embeddings <= 0) {
    return absl::InvalidArgumentError("LLM config: dynamic rope scaling needs max_position_embeddings");
  }
  return absl::OkStatus();
}

absl::Status CheckDevice(const Precision& p) {
  if (!p.device.is_cpu() && p.quantize != Quantization::kNone) {
    return absl::InvalidArgumentError(absl::StrCat("--quantize ", QuantizationName(p.quantize),
                                                   " runs on the CPU only (device ", p.device.str(), ")"));
  }
  return absl::OkStatus();
}

absl::Status CheckDType(at::ScalarType dtype) {
  if (dtype != at::kFloat && dtype != at::kBFloat16) {
    return absl::InvalidArgumentError(
        absl::StrCat("LLM compute dtype must be float32 or bfloat16, got ", c10::toString(dtype)));
  }
  return absl::OkStatus();
}

}  // namespace

// ---- RotaryEmbedding ----

RotaryEmbedding::RotaryEmbedding(const LlmConfig& c, c10::Device device)
    : dim_(c.head_dim()),
      max_pos_(c.max_position_embeddings),
      theta_(c.rope_theta),
      cached_len_(c.max_position_embeddings),
      base_(c.rope_theta),
      device_(device) {
  if (c.rope_scaling) {
    scaling_type_ = c.rope_scaling->type;
    factor_ = c.rope_scaling->factor;
  }
  if (dim_ > 0) inv_freq_ = InvFreq(base_);
}

at::Tensor RotaryEmbedding::InvFreq(double base) const {
  // 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim)); Python's
  // `1.0 / t` is t.reciprocal() * 1.0.
  at::InferenceMode guard;
  at::Tensor exponents = at::arange(0, dim_, 2, at::TensorOptions().dtype(at::kLong)).to(at::kFloat) / dim_;
  return at::pow(at::Scalar(base), exponents).reciprocal().to(device_);
}

void RotaryEmbedding::Observe(int64_t kv_len) {
  if (kv_len <= cached_len_) return;
  cached_len_ = kv_len;
  if (scaling_type_ == "dynamic" && kv_len > max_pos_) {
    // InternLM2DynamicNTKScalingRotaryEmbedding._set_cos_sin_cache.
    const double d = static_cast<double>(dim_);
    base_ = theta_ * std::pow(factor_ * static_cast<double>(kv_len) / static_cast<double>(max_pos_) - (factor_ - 1),
                              d / (d - 2));
    inv_freq_ = InvFreq(base_);
  }
}

std::pair<at::Tensor, at::Tensor> RotaryEmbedding::Tables(const at::Tensor& positions, at::ScalarType dtype) const {
  at::Tensor t = positions.to(device_, at::kFloat);
  if (scaling_type_ == "linear") t = t / factor_;
  at::Tensor freqs = t.unsqueeze(-1) * inv_freq_;             // [B, T, d/2]
  at::Tensor emb = at::cat({freqs, freqs}, -1).unsqueeze(2);  // [B, T, 1, d]
  return {emb.cos().to(dtype), emb.sin().to(dtype)};
}

namespace {

// Blocks of kRopeBlock positions' cos and sin rows ([kRopeBlock, d] each,
// contiguous CPU tensors), per table (head dim, base, scaling, dtype), shared
// by the process's rotary states. Bounded: positions from kMaxRopeBlocks
// blocks on (131072) are computed, not cached (a table holds at most 64 MB
// at head dim 64 in fp32), and the tables are dropped when more than
// kMaxRopeTables have been made.
constexpr int64_t kRopeBlock = 256;
constexpr int64_t kMaxRopeBlocks = 1 << 9;
constexpr size_t kMaxRopeTables = 16;

struct RopeBlocks {
  std::mutex mu;
  std::map<std::tuple<int64_t, double, std::string, double, int>, std::vector<std::pair<at::Tensor, at::Tensor>>>
      tables;
};

RopeBlocks& SharedRopeBlocks() {
  static RopeBlocks* blocks = new RopeBlocks();  // (never destroyed: used until exit)
  return *blocks;
}

}  // namespace

std::pair<at::Tensor, at::Tensor> RotaryEmbedding::Tables(const std::vector<int64_t>& positions,
                                                          at::ScalarType dtype) const {
  const int64_t n = static_cast<int64_t>(positions.size());
  const bool dynamic_moved = scaling_type_ == "dynamic" && base_ != theta_;
  bool cached = device_.is_cpu() && n >= 1 && n <= 16 && dim_ > 0 && !dynamic_moved &&
                (dtype == at::kFloat || dtype == at::kBFloat16);
  for (int64_t p : positions) cached = cached && p >= 0 && p / kRopeBlock < kMaxRopeBlocks;
  if (!cached) {
    return Tables(at::tensor(positions, at::TensorOptions().dtype(at::kLong)).view({1, n}), dtype);
  }
  const auto opts = at::TensorOptions().dtype(dtype);
  at::Tensor cos = at::empty({1, n, 1, dim_}, opts), sin = at::empty({1, n, 1, dim_}, opts);
  const size_t row = static_cast<size_t>(dim_) * cos.element_size();
  RopeBlocks& shared = SharedRopeBlocks();
  std::lock_guard<std::mutex> lock(shared.mu);
  const auto key = std::make_tuple(dim_, base_, scaling_type_, factor_, static_cast<int>(dtype));
  auto it = shared.tables.find(key);
  if (it == shared.tables.end()) {
    if (shared.tables.size() >= kMaxRopeTables) shared.tables.clear();
    it = shared.tables.emplace(key, std::vector<std::pair<at::Tensor, at::Tensor>>()).first;
  }
  std::vector<std::pair<at::Tensor, at::Tensor>>& blocks = it->second;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t b = positions[i] / kRopeBlock, r = positions[i] % kRopeBlock;
    if (static_cast<int64_t>(blocks.size()) <= b) blocks.resize(b + 1);
    if (!blocks[b].first.defined()) {
      const at::InferenceMode guard;  // (the blocks are only read through their data)
      auto [c, s] = Tables(
          at::arange(b * kRopeBlock, (b + 1) * kRopeBlock, at::TensorOptions().dtype(at::kLong)).view({1, kRopeBlock}),
          dtype);
      blocks[b] = {c.reshape({kRopeBlock, dim_}).contiguous(), s.reshape({kRopeBlock, dim_}).contiguous()};
    }
    std::memcpy(static_cast<char*>(cos.data_ptr()) + i * row,
                static_cast<const char*>(blocks[b].first.data_ptr()) + r * row, row);
    std::memcpy(static_cast<char*>(sin.data_ptr()) + i * row,
                static_cast<const char*>(blocks[b].second.data_ptr()) + r * row, row);
  }
  return {cos, sin};
}

// ---- CausalLM ----

Precision Precision::ForRequested(at::ScalarType requested, c10::Device device) {
  Precision p{EffectiveComputeDType(requested, device), requested};
  p.device = device;
  return p;
}

CausalLM::CausalLM(const LlmConfig& config, const Precision& precision)
    : config_(config),
      dtype_(precision.compute),
      weight_dtype_(precision.weights),
      quantize_(precision.quantize),
      head_candidates_(precision.head_candidates),
      device_(precision.device),
      module_(LanguageModel(config, precision.weights)),
      rope_(config, precision.device) {}

void CausalLM::Finish() {
  at::NoGradGuard no_grad;
  if (weight_dtype_ != dtype_) {
    // Only the matrices keep the storage dtype.
    for (auto& p : module_->parameters(/*recurse=*/true)) {
      if (p.dim() < 2) p.set_data(p.detach().to(dtype_));
    }
  }
  for (auto& layer : module_->model->typed_layers) layer->Fuse();
  bool any_quantized = quantize_ != Quantization::kNone;
  for (DenseImpl* d : DenseLayers(*module_)) any_quantized = any_quantized || d->quant != nullptr;
  if (any_quantized) {
    for (auto& layer : module_->model->typed_layers) layer->Quantize(quantize_);
    DenseImpl& head = *module_->head;
    bool quantized_layers = false;
    for (DenseImpl* d : DenseLayers(*module_)) quantized_layers = quantized_layers || (d != &head && d->quant);
    if (quantized_layers && head_candidates_ > 0 && !head.quant && device_.is_cpu()) {
      // The pass over the vocabulary in 4 bits; the candidates through int8
      // (--quantize int4 or int8) or the checkpoint's own weights (AWQ).
      // Under --quantize int8 the head (InternVL2-1B: 136 MB of the layers'
      // and head's 496) is then 76 MB a step: 1.63x -> 1.79x bf16's tokens/s,
      // steps interleaved (README, "The vocabulary head of a quantized model").
      std::shared_ptr<QuantMatrix> coarse = QuantMatrix::Quantize(head.weight, Quantization::kInt4);
      if (coarse->kind() == QuantMatrix::Kind::kInt4) {
        head.coarse = coarse;
        head.candidates = head_candidates_;
        if (quantize_ == Quantization::kInt4) head.quant = QuantMatrix::Int8(head.weight);
      }
    }
    QuantizeDense(head, quantize_);
    ReleaseQuantizedWeights({&head});
  }
  // The matrices decoding streams (not the embedding table: one row a token).
  std::vector<at::Tensor> streamed;
  for (auto& p : module_->parameters(/*recurse=*/true)) {
    if (p.dim() == 2 && !p.is_same(module_->model->embed->weight)) streamed.push_back(p);
  }
  for (DenseImpl* d : DenseLayers(*module_)) {
    for (const QuantMatrix* q : {d->quant.get(), d->coarse.get()}) {
      if (q == nullptr) continue;
      for (const at::Tensor* t : {&q->data(), &q->scale(), &q->zmin()}) {
        if (t->defined()) streamed.push_back(*t);
      }
    }
  }
  MoveToHugePages(streamed);
}

absl::StatusOr<std::vector<std::string>> CausalLM::LoadAwq(const TensorStore& store, const std::string& prefix,
                                                           std::vector<std::string>* awq_keys) {
  std::vector<std::string> replaced;
  if (!config_.awq) return replaced;
  at::NoGradGuard no_grad;
  for (const auto& item : module_->named_modules("", /*include_self=*/false)) {
    auto* d = dynamic_cast<DenseImpl*>(item.value().get());
    if (d == nullptr) continue;
    const std::string base = prefix + item.key();
    const TensorView* qweight = store.Find(base + ".qweight");
    const TensorView* qzeros = store.Find(base + ".qzeros");
    const TensorView* scales = store.Find(base + ".scales");
    if (qweight == nullptr && qzeros == nullptr && scales == nullptr) continue;
    if (qweight == nullptr || qzeros == nullptr || scales == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("AWQ checkpoint ", store.description(), ": ", base, " needs qweight, qzeros and scales"));
    }
    // Shapes first: the model's, not the file's, bound what is unpacked.
    const int64_t out = d->weight.size(0), in = d->weight.size(1);
    if (qweight->shape != std::vector<int64_t>{in, out / 8} || out % 8 != 0) {
      return absl::InvalidArgumentError(absl::StrCat("AWQ checkpoint ", store.description(), ": ", base,
                                                     ".qweight is not [", in, ", ", out / 8, "] for a [", out, ", ", in,
                                                     "] layer"));
    }
    INTERNVL_ASSIGN_OR_RETURN(
        auto q, QuantMatrix::FromAwq(TensorFromView(*qweight, at::kInt), TensorFromView(*qzeros, at::kInt),
                                     TensorFromView(*scales, at::kFloat), config_.awq->group_size));
    if (q->out() != d->weight.size(0) || q->in() != d->weight.size(1)) {
      return absl::InvalidArgumentError(absl::StrCat("AWQ checkpoint ", store.description(), ": ", base, " is [",
                                                     q->out(), ", ", q->in(), "], the model expects [",
                                                     d->weight.size(0), ", ", d->weight.size(1), "]"));
    }
    for (const TensorView* v : {qweight, qzeros, scales}) ReleaseMappedPages(v->data, v->nbytes);
    if (device_.is_cpu()) {
      d->quant = std::move(q);
      d->weight.set_data(at::empty({0}, d->weight.options()));
    } else {
      // The 4-bit kernels are the CPU's: elsewhere the layer is widened to
      // the storage dtype once, here.
      d->weight.set_data(q->Dequantize(0, q->out(), weight_dtype_).to(device_));
    }
    replaced.push_back(item.key() + ".weight");
    for (const char* suffix : {".qweight", ".qzeros", ".scales"}) awq_keys->push_back(item.key() + suffix);
  }
  if (replaced.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("checkpoint ", store.description(), " declares AWQ quantization but holds no qweight tensors"));
  }
  return replaced;
}

absl::StatusOr<std::unique_ptr<CausalLM>> CausalLM::Load(const LlmConfig& config, const TensorStore& store,
                                                         at::ScalarType dtype, const std::string& prefix) {
  return Load(config, store, Precision::Uniform(dtype), prefix);
}

absl::StatusOr<std::unique_ptr<CausalLM>> CausalLM::Load(const LlmConfig& config, const TensorStore& store,
                                                         const Precision& precision, const std::string& prefix) {
  INTERNVL_RETURN_IF_ERROR(CheckConfig(config));
  INTERNVL_RETURN_IF_ERROR(CheckDType(precision.compute));
  INTERNVL_RETURN_IF_ERROR(CheckDType(precision.weights));
  INTERNVL_RETURN_IF_ERROR(CheckDevice(precision));
  std::unique_ptr<CausalLM> lm;
  INTERNVL_RETURN_IF_ERROR(TorchGuard("building LLM", [&] { lm.reset(new CausalLM(config, precision)); }));
  // AWQ layers first: their float weights are not in the checkpoint.
  std::vector<std::string> awq_keys;
  absl::StatusOr<std::vector<std::string>> awq;
  INTERNVL_RETURN_IF_ERROR(TorchGuard("loading AWQ layers", [&]() -> absl::Status {
    awq = lm->LoadAwq(store, prefix, &awq_keys);
    return awq.status();
  }));
  // Everything is loaded (rounded) in the storage dtype; norms and biases are
  // then widened to the compute dtype, as a bf16 model computed in fp32.
  INTERNVL_RETURN_IF_ERROR(
      LoadModuleWeights(*lm->module_, store, prefix, precision.weights, awq_keys, *awq, precision.device));
  INTERNVL_RETURN_IF_ERROR(TorchGuard("fusing LLM weights", [&] { lm->Finish(); }));
  return lm;
}

absl::StatusOr<std::unique_ptr<CausalLM>> CausalLM::CreateRandom(const LlmConfig& config, at::ScalarType dtype,
                                                                 uint64_t seed, double stddev) {
  return CreateRandom(config, Precision::Uniform(dtype), seed, stddev);
}

absl::StatusOr<std::unique_ptr<CausalLM>> CausalLM::CreateRandom(const LlmConfig& config, const Precision& precision,
                                                                 uint64_t seed, double stddev) {
  INTERNVL_RETURN_IF_ERROR(CheckConfig(config));
  INTERNVL_RETURN_IF_ERROR(CheckDType(precision.compute));
  INTERNVL_RETURN_IF_ERROR(CheckDType(precision.weights));
  INTERNVL_RETURN_IF_ERROR(CheckDevice(precision));
  std::unique_ptr<CausalLM> lm;
  INTERNVL_RETURN_IF_ERROR(TorchGuard("building random LLM", [&] {
    lm.reset(new CausalLM(config, precision));
    at::NoGradGuard no_grad;
    if (!precision.device.is_cpu()) {
      for (auto& p : lm->module_->parameters(/*recurse=*/true))
        p.set_data(at::empty_like(p, p.options().device(precision.device)));
    }
    // On the CPU one seeded generator; elsewhere the device's own generator,
    // seeded (drawing billions of weights on one CPU core and copying them
    // over would take minutes): the weights then differ between devices.
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
    if (!precision.device.is_cpu()) {
      gen = at::globalContext().defaultGenerator(precision.device);
      std::lock_guard<std::mutex> lock(gen.mutex());
      gen.set_current_seed(seed);
    }
    for (auto& item : lm->module_->named_parameters(/*recurse=*/true)) {
      const std::string& name = item.key();
      at::Tensor& p = item.value();
      if (absl::EndsWith(name, "norm.weight")) {
        p.fill_(1.0);
      } else if (absl::EndsWith(name, ".bias")) {
        p.zero_();
      } else if (p.scalar_type() == at::kFloat) {
        p.normal_(0.0, stddev, gen);
      } else {
        // libtorch's bf16 normal_ is scalar (sincos per element): draw in
        // fp32 and round.
        p.copy_(at::empty(p.sizes(), p.options().dtype(at::kFloat)).normal_(0.0, stddev, gen));
      }
    }
    lm->Finish();
  }));
  return lm;
}

int64_t CausalLM::num_parameters() const {
  int64_t n = 0;
  for (const auto& p : module_->parameters()) n += p.numel();
  for (DenseImpl* d : DenseLayers(*module_)) n += d->quant ? d->quant->out() * d->quant->in() : 0;
  return n;
}

int64_t CausalLM::parameter_bytes() const {
  int64_t n = 0;
  for (const auto& p : module_->parameters()) n += p.numel() * p.element_size();
  return n;
}

int64_t CausalLM::decode_weight_bytes() const {
  const at::Tensor& emb = module_->model->embed->weight;
  int64_t bytes = parameter_bytes() - emb.numel() * emb.element_size();
  for (DenseImpl* d : DenseLayers(*module_)) bytes += d->quant ? d->quant->bytes() : 0;
  // A rescored head reads its 4-bit copy, and of its own weights only the
  // candidates' rows.
  const DenseImpl& head = *module_->head;
  if (head.coarse) {
    const int64_t own = head.quant ? head.quant->bytes() : head.weight.numel() * head.weight.element_size();
    bytes += head.coarse->bytes() - own + own / std::max<int64_t>(1, head.coarse->out()) * head.candidates;
  }
  return bytes;
}

std::string CausalLM::weight_format() const {
  const std::string dense = weight_dtype_ == at::kBFloat16 ? "bf16" : "fp32";
  std::string layers, head;
  auto describe = [&](const DenseImpl& d) -> std::string {
    if (!d.quant) return dense;
    if (d.quant->kind() == QuantMatrix::Kind::kInt8) return "int8";
    return absl::StrCat(config_.awq ? "int4 AWQ g" : "int4 g", d.quant->group());
  };
  for (DenseImpl* d : DenseLayers(*module_)) {
    if (d == module_->head.get()) continue;
    layers = describe(*d);
    break;
  }
  head = describe(*module_->head);
  if (module_->head->coarse) {
    head = absl::StrCat("int4 g", module_->head->coarse->group(), " (top ", module_->head->candidates, " rescored in ",
                        head, ")");
  }
  return layers == head ? layers : absl::StrCat(layers, " + ", head, " head");
}

absl::StatusOr<at::Tensor> CausalLM::Embed(const at::Tensor& ids) const {
  if (!ids.defined() || ids.scalar_type() != at::kLong) {
    return absl::InvalidArgumentError("Embed: ids must be an int64 tensor");
  }
  if (at::Tensor rows = EmbedRowsOnCpu(ids); rows.defined()) return rows;
  return TorchGuard("embedding tokens", [&] { return module_->model->embed->forward(ids.to(device_)).to(dtype_); });
}

at::Tensor CausalLM::EmbedRowsOnCpu(const at::Tensor& ids) const {
  const at::Tensor& w = module_->model->embed->weight;
  const bool widen = w.scalar_type() == at::kBFloat16 && dtype_ == at::kFloat;
  if (!device_.is_cpu() || !ids.device().is_cpu() || !ids.is_contiguous() || !w.device().is_cpu() || w.dim() != 2 ||
      !w.is_contiguous() || (w.scalar_type() != dtype_ && !widen) || at::GradMode::is_enabled()) {
    return {};
  }
  const int64_t n = ids.numel(), vocab = w.size(0), hidden = w.size(1);
  const int64_t* id = ids.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    if (id[i] < 0 || id[i] >= vocab) return {};  // (the op's own error)
  }
  std::vector<int64_t> shape(ids.sizes().begin(), ids.sizes().end());
  shape.push_back(hidden);
  const at::Tensor rows = GatherMatrixRows(w, id, n);
  if (!widen) return rows.view(shape);
  // bf16 rows widened to fp32 (exact), as .to(kFloat).
  at::Tensor out = at::empty(shape, w.options().dtype(at::kFloat));
  const auto* from = static_cast<const uint16_t*>(rows.data_ptr());
  float* to = out.data_ptr<float>();
  if (ActiveGemvKernel() != GemvKernel::kPortable && gemv::CpuHasAvx2Fma()) {
    gemv::Bf16ToFloatAvx2(from, to, n * hidden);
  } else {
    for (int64_t k = 0; k < n * hidden; ++k) to[k] = Bf16BitsToFloat(from[k]);
  }
  return out;
}

absl::StatusOr<at::Tensor> CausalLM::Forward(const at::Tensor& inputs_embeds, const ForwardOptions& options) {
  if (!inputs_embeds.defined() || inputs_embeds.dim() != 3 || inputs_embeds.size(2) != config_.hidden_size ||
      inputs_embeds.size(1) == 0) {
    return absl::InvalidArgumentError(absl::StrCat("LLM forward: inputs_embeds must be [B, T>0, ", config_.hidden_size,
                                                   "], got ",
                                                   inputs_embeds.defined() ? Shape(inputs_embeds) : "undefined"));
  }
  const int64_t b = inputs_embeds.size(0), t = inputs_embeds.size(1);
  const at::Tensor& mask = options.attention_mask;
  if (mask.defined() && (mask.dim() != 2 || mask.size(0) != b || mask.size(1) != t)) {
    return absl::InvalidArgumentError(
        absl::StrCat("LLM forward: attention_mask must be [", b, ", ", t, "], got ", Shape(mask)));
  }
  return TorchGuard("LLM forward", [&]() -> at::Tensor {
    const auto long_opts = at::TensorOptions().dtype(at::kLong).device(device_);
    // Position ids as HF generate builds them for batch_chat: cumsum(mask) - 1,
    // pads set to 1 (prepare_inputs_for_generation).
    at::Tensor positions, valid;
    bool padding = false;
    if (mask.defined()) {
      valid = mask.to(device_).ne(0);
      padding = !valid.all().item<bool>();
      positions = (valid.to(at::kLong).cumsum(1) - 1).masked_fill(valid.logical_not(), 1);
    } else {
      positions = at::arange(t, long_opts).unsqueeze(0).expand({b, t});
    }
    at::Tensor cos, sin;
    {
      std::lock_guard<std::mutex> lock(rope_mu_);
      rope_.Observe(t);
      std::tie(cos, sin) = rope_.Tables(positions, dtype_);
    }
    LayerContext ctx;
    ctx.cos = cos;
    ctx.sin = sin;
    if (t > 1 || padding) {
      // masked[b, i, j] = key j is in query i's future, or key j is padding.
      at::Tensor key_pos = at::arange(t, long_opts).view({1, 1, t});
      at::Tensor query_pos = at::arange(t, long_opts).view({1, t, 1});
      at::Tensor masked = key_pos > query_pos;                                    // [1, T, T]
      if (padding) masked = masked.logical_or(valid.logical_not().unsqueeze(1));  // [B, T, T]
      ctx.masked = masked.unsqueeze(1).unsqueeze(1);                              // [B|1, 1, 1, T, T]
    }
    at::Tensor hidden = module_->model->forward(inputs_embeds.to(device_, dtype_), ctx);
    switch (options.logits) {
      case LogitsMode::kLast:
        return CastFloatBf16(module_->head(hidden.select(1, t - 1)), at::kFloat);
      case LogitsMode::kAll:
        return CastFloatBf16(module_->head->ForwardOwn(hidden), at::kFloat);
      case LogitsMode::kNone:
        break;
    }
    return hidden;
  });
}

absl::StatusOr<at::Tensor> CausalLM::AttentionColumnMeans(const at::Tensor& inputs_embeds, int layer, int64_t key_begin,
                                                          int64_t key_end, int64_t query_begin) const {
  if (!inputs_embeds.defined() || inputs_embeds.dim() != 3 || inputs_embeds.size(0) != 1 ||
      inputs_embeds.size(2) != config_.hidden_size)
    return absl::InvalidArgumentError(absl::StrCat("attention scores: inputs_embeds must be [1, L, ",
                                                   config_.hidden_size, "], got ",
                                                   inputs_embeds.defined() ? Shape(inputs_embeds) : "undefined"));
  const int64_t len = inputs_embeds.size(1);
  if (layer < 0 || layer >= config_.num_hidden_layers)
    return absl::InvalidArgumentError(
        absl::StrCat("attention scores: layer ", layer, " of a ", config_.num_hidden_layers, "-layer model"));
  if (!(0 <= key_begin && key_begin < key_end && key_end <= query_begin && query_begin < len))
    return absl::InvalidArgumentError(absl::StrCat("attention scores: need 0 <= key_begin < key_end <= query_begin < L",
                                                   ", got keys [", key_begin, ", ", key_end, "), queries from ",
                                                   query_begin, ", L ", len));
  return TorchGuard("attention scores", [&]() -> at::Tensor {
    // Query rows per chunk: [heads, rows, L] fp32 scores stay ~64 MB at
    // L = 8k with 32 heads.
    constexpr int64_t kRows = 64;
    RotaryEmbedding rope(config_, device_);
    rope.Observe(len);
    LayerContext ctx;
    const auto long_opts = at::TensorOptions().dtype(at::kLong).device(device_);
    std::tie(ctx.cos, ctx.sin) = rope.Tables(at::arange(len, long_opts).unsqueeze(0), dtype_);
    ctx.causal_chunk = 4 * kRows;
    at::Tensor h = inputs_embeds.to(device_, dtype_);
    auto& layers = module_->model->typed_layers;
    for (int i = 0; i < layer; ++i) h = layers[i]->forward(h, ctx);
    auto [q, k] = layers[layer]->QueryKey(h, ctx);  // [1, L, Hq, d], [1, L, KV, d]
    const int64_t heads = q.size(2), kv_heads = k.size(2), d = q.size(3), groups = heads / kv_heads;
    const at::Tensor qf = q[0].to(at::kFloat).permute({1, 0, 2}).contiguous();  // [Hq, L, d]
    const at::Tensor kt = k[0].to(at::kFloat).permute({1, 2, 0}).contiguous();  // [KV, d, L]
    const double scale = std::sqrt(static_cast<double>(d));
    const int64_t width = key_end - key_begin;
    at::Tensor sums = at::zeros({heads, width}, at::TensorOptions().dtype(at::kDouble).device(device_));
    for (int64_t a = query_begin; a < len; a += kRows) {
      const int64_t e = std::min(len, a + kRows), rows = e - a;
      // Query head j*G+g uses kv head j: [KV, G*rows, d] x [KV, d, e].
      at::Tensor qc = qf.narrow(1, a, rows).reshape({kv_heads, groups * rows, d});
      at::Tensor scores = at::bmm(qc, kt.narrow(2, 0, e)).div_(scale).view({kv_heads, groups, rows, e});
      at::Tensor masked = at::arange(e, long_opts).view({1, e}) > at::arange(a, e, long_opts).view({rows, 1});
      scores.masked_fill_(masked, std::numeric_limits<float>::lowest());
      at::Tensor probs = at::softmax(scores, -1).narrow(-1, key_begin, width);  // [KV, G, rows, width]
      sums.add_(probs.reshape({heads, rows, width}).to(at::kDouble).sum(1));
    }
    // mean over the query rows, then over the heads (the official order).
    return sums.div_(static_cast<double>(len - query_begin)).mean(0).to(at::kCPU, at::kFloat);
  });
}

absl::StatusOr<std::unique_ptr<PagedKVPool>> CausalLM::NewPagedPool(int64_t num_blocks, int block_size,
                                                                    std::optional<at::ScalarType> kv_dtype) const {
  const at::ScalarType dtype = kv_dtype.value_or(dtype_);
  if (!ServesKvDtype(dtype)) {
    return absl::InvalidArgumentError(absl::StrCat("a KV cache in ", c10::toString(dtype), " for a model computing in ",
                                                   c10::toString(dtype_), " (its own dtype, or bf16 under fp32)"));
  }
  return PagedKVPool::Create(config_, num_blocks, block_size, dtype, device_);
}

absl::StatusOr<at::Tensor> CausalLM::ForwardPaged(const at::Tensor& inputs_embeds, const std::vector<PagedSeq>& seqs,
                                                  const std::vector<const RotaryEmbedding*>& ropes, PagedKVPool& pool) {
  if (!inputs_embeds.defined() || inputs_embeds.dim() != 2 || inputs_embeds.size(1) != config_.hidden_size) {
    return absl::InvalidArgumentError(absl::StrCat("LLM paged forward: inputs_embeds must be [N, ", config_.hidden_size,
                                                   "], got ",
                                                   inputs_embeds.defined() ? Shape(inputs_embeds) : "undefined"));
  }
  if (seqs.empty() || ropes.size() != seqs.size()) {
    return absl::InvalidArgumentError("LLM paged forward: needs sequences, each with its rotary state");
  }
  if (pool.num_layers() != config_.num_hidden_layers || !ServesKvDtype(pool.dtype()) ||
      pool.key(0).device() != device_ || pool.key(0).size(1) != config_.num_key_value_heads ||
      pool.key(0).size(3) != config_.head_dim()) {
    return absl::InvalidArgumentError("LLM paged forward: the KV pool was made for another model or dtype");
  }
  int64_t rows = 0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const PagedSeq& s = seqs[i];
    if (s.num_new < 1 || s.start < 0 || ropes[i] == nullptr ||
        static_cast<int64_t>(s.blocks.size()) * pool.block_size() < s.start + s.num_new) {
      return absl::InvalidArgumentError(absl::StrCat("LLM paged forward: sequence ", i, " feeds ", s.num_new,
                                                     " tokens at ", s.start, " with ", s.blocks.size(), " blocks of ",
                                                     pool.block_size()));
    }
    for (int32_t b : s.blocks) {
      if (b < 0 || b >= pool.num_blocks())
        return absl::InvalidArgumentError(absl::StrCat("LLM paged forward: block ", b, " outside the pool"));
    }
    rows += s.num_new;
  }
  if (rows != inputs_embeds.size(0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("LLM paged forward: ", inputs_embeds.size(0), " embedding rows for ", rows, " fed tokens"));
  }
  return TorchGuard("LLM paged forward", [&]() -> at::Tensor {
    const auto long_opts = at::TensorOptions().dtype(at::kLong);
    // Rotary tables per token: one call when every sequence has the same
    // base (no dynamic-NTK growth anywhere), else per sequence.
    bool same_base = true;
    for (const RotaryEmbedding* r : ropes) same_base = same_base && r->base() == ropes[0]->base();
    at::Tensor cos, sin;
    if (same_base) {
      std::vector<int64_t> positions;
      positions.reserve(rows);
      for (const PagedSeq& s : seqs)
        for (int64_t p = s.start; p < s.start + s.num_new; ++p) positions.push_back(p);
      std::tie(cos, sin) = ropes[0]->Tables(positions, dtype_);
    } else {
      std::vector<at::Tensor> coss, sins;
      for (size_t i = 0; i < seqs.size(); ++i) {
        at::Tensor pos = (at::arange(seqs[i].num_new, long_opts) + seqs[i].start).view({1, seqs[i].num_new});
        auto [c, s] = ropes[i]->Tables(pos, dtype_);
        coss.push_back(c);
        sins.push_back(s);
      }
      cos = at::cat(coss, 1);
      sin = at::cat(sins, 1);
    }
    PagedContext paged = MakePagedContext(pool, seqs);
    LayerContext ctx;
    ctx.cos = cos;
    ctx.sin = sin;
    ctx.paged = &paged;
    at::Tensor hidden = module_->model->forward(inputs_embeds.to(device_, dtype_).unsqueeze(0), ctx)[0];  // [N, H]
    std::vector<int64_t> last;
    for (size_t i = 0; i < seqs.size(); ++i) {
      if (seqs[i].logits) last.push_back(paged.row_begin[i] + seqs[i].num_new - 1);
    }
    if (last.empty()) return at::empty({0, config_.vocab_size}, at::TensorOptions().dtype(at::kFloat).device(device_));
    at::Tensor h = static_cast<int64_t>(last.size()) == rows
                       ? hidden
                       : hidden.index_select(0, at::tensor(last, long_opts).to(device_));
    return CastFloatBf16(module_->head(h), at::kFloat);
  });
}

absl::StatusOr<at::Tensor> ScatterImageEmbeddings(const at::Tensor& text_embeds, const at::Tensor& input_ids,
                                                  int64_t img_context_id, const at::Tensor& vit_embeds) {
  if (!text_embeds.defined() || text_embeds.dim() != 3 || !input_ids.defined() || input_ids.dim() != 2 ||
      input_ids.size(0) != text_embeds.size(0) || input_ids.size(1) != text_embeds.size(1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("ScatterImageEmbeddings: need text_embeds [B,T,H] and input_ids [B,T], got ",
                     text_embeds.defined() ? Shape(text_embeds) : "undefined", " and ",
                     input_ids.defined() ? Shape(input_ids) : "undefined"));
  }
  const int64_t hidden = text_embeds.size(2);
  return TorchGuard("scattering image embeddings", [&]() -> absl::StatusOr<at::Tensor> {
    at::Tensor selected = input_ids.to(text_embeds.device()).eq(img_context_id);
    const int64_t n_slots = selected.sum().item<int64_t>();
    const int64_t n_rows = vit_embeds.defined() && vit_embeds.dim() >= 1 && vit_embeds.size(-1) == hidden
                               ? vit_embeds.numel() / hidden
                               : -1;
    if (n_slots == 0 && (!vit_embeds.defined() || vit_embeds.numel() == 0)) return text_embeds;
    if (!vit_embeds.defined() || vit_embeds.size(-1) != hidden) {
      return absl::InvalidArgumentError(absl::StrCat("ScatterImageEmbeddings: image embeddings ",
                                                     vit_embeds.defined() ? Shape(vit_embeds) : "undefined",
                                                     " do not match hidden size ", hidden));
    }
    if (n_rows != n_slots) {
      return absl::InvalidArgumentError(absl::StrCat("ScatterImageEmbeddings: ", n_slots, " <IMG_CONTEXT> tokens (id ",
                                                     img_context_id, ") but ", n_rows, " image embedding rows ",
                                                     Shape(vit_embeds)));
    }
    // index_put with a boolean mask fills the selected rows in row-major
    // order of the flattened batch, as `input_embeds[selected] = ...`.
    return text_embeds.index_put({selected},
                                 vit_embeds.reshape({-1, hidden}).to(text_embeds.device(), text_embeds.scalar_type()));
  });
}

}  // namespace internvl::llm
