#include "core/vision/vision_model.h"

#include <ATen/ATen.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/container/sequential.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/nn/device.h"
#include "core/nn/torch_util.h"
#include "core/nn/weights.h"
#include "core/status.h"
#include "core/vision/intern_vit.h"
#include "core/vision/vision_model_torch.h"

namespace internvl {

struct VisionModel::Impl {
  InternVLConfig config;
  at::ScalarType dtype = at::kBFloat16;
  c10::Device device = c10::Device(c10::kCPU);
  VisionOptions options;
  InternVisionModel vision_model{nullptr};
  torch::nn::Sequential mlp1{nullptr};
  int64_t layers_to_run = -1;
  std::string fingerprint;
};

namespace {

// mlp1 = LayerNorm(C*r) -> Linear(C*r, H) -> GELU -> Linear(H, H), with
// r = (1/downsample_ratio)^2; keys mlp1.0, mlp1.1, mlp1.3 (nn.LayerNorm's
// default eps 1e-5).
torch::nn::Sequential MakeProjector(const InternVLConfig& c) {
  const int64_t r = static_cast<int64_t>(std::lround(1.0 / c.downsample_ratio));
  const int64_t in = c.vision.hidden_size * r * r;
  const int64_t out = c.llm.hidden_size;
  return torch::nn::Sequential(torch::nn::LayerNorm(torch::nn::LayerNormOptions({in}).eps(1e-5)), LoadedLinear(in, out),
                               torch::nn::GELU(), LoadedLinear(out, out));
}

std::string ShapeStr(const std::vector<int64_t>& s) { return absl::StrCat("[", absl::StrJoin(s, ","), "]"); }

}  // namespace

VisionModel::VisionModel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
VisionModel::~VisionModel() = default;

const InternVLConfig& VisionModel::config() const { return impl_->config; }
const std::string& VisionModel::fingerprint() const { return impl_->fingerprint; }
DType VisionModel::compute_dtype() const { return impl_->dtype == at::kFloat ? DType::kF32 : DType::kBF16; }

absl::StatusOr<std::unique_ptr<VisionModel>> VisionModel::Load(const std::string& model_dir,
                                                               const VisionOptions& options) {
  INTERNVL_ASSIGN_OR_RETURN(InternVLConfig config, LoadInternVLConfig(model_dir));
  INTERNVL_ASSIGN_OR_RETURN(auto store, TensorStore::OpenDir(model_dir));
  return Load(config, *store, options);
}

absl::StatusOr<std::unique_ptr<VisionModel>> VisionModel::Load(const InternVLConfig& config, const TensorStore& store,
                                                               const VisionOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->config = config;
  impl->options = options;
  if (impl->options.tile_batch < 1) impl->options.tile_batch = 1;
  INTERNVL_ASSIGN_OR_RETURN(at::ScalarType requested, ParseComputeDType(options.dtype));
  INTERNVL_ASSIGN_OR_RETURN(impl->device, ParseDevice(options.device));
  INTERNVL_RETURN_IF_ERROR(PrepareDevice(impl->device));
  impl->dtype = EffectiveComputeDType(requested, impl->device);
  // select_layer indexes the reference's hidden_states tuple (embeddings
  // output first, then each layer): -1 is the last layer's output.
  const int L = config.vision.num_hidden_layers;
  impl->layers_to_run = config.select_layer < 0 ? L + 1 + config.select_layer : config.select_layer;
  INTERNVL_RETURN_IF_ERROR(TorchGuard("building the vision model", [&] {
    impl->vision_model = InternVisionModel(config.vision);
    impl->mlp1 = MakeProjector(config);
  }));
  // Weights are rounded to the requested dtype even when computed in fp32, so
  // "bf16" means bf16 weights everywhere.
  INTERNVL_RETURN_IF_ERROR(
      LoadModuleWeights(*impl->vision_model, store, "vision_model.", requested, {}, {}, impl->device));
  INTERNVL_RETURN_IF_ERROR(LoadModuleWeights(*impl->mlp1, store, "mlp1.", requested, {}, {}, impl->device));
  if (requested != impl->dtype) {
    INTERNVL_RETURN_IF_ERROR(TorchGuard("converting the vision weights", [&] {
      impl->vision_model->to(impl->dtype);
      impl->mlp1->to(impl->dtype);
    }));
  }
  INTERNVL_RETURN_IF_ERROR(TorchGuard("preparing the vision model", [&] {
    impl->vision_model->eval();
    impl->mlp1->eval();
  }));
  impl->fingerprint =
      absl::StrCat(WeightsFingerprint(store, "vision_model."), WeightsFingerprint(store, "mlp1."), "-", options.dtype);
  return std::unique_ptr<VisionModel>(new VisionModel(std::move(impl)));
}

at::Tensor PixelShuffle(const at::Tensor& x, double scale_factor, bool v2) {
  // as InternVLChatModel.pixel_shuffle (n, w, h, c naming kept).
  const int64_t n = x.size(0), w = x.size(1), h = x.size(2), c = x.size(3);
  const auto hs = static_cast<int64_t>(h * scale_factor), ws = static_cast<int64_t>(w * scale_factor);
  const auto c1 = static_cast<int64_t>(c / scale_factor), c2 = static_cast<int64_t>(c / (scale_factor * scale_factor));
  at::Tensor y = x.view({n, w, hs, c1}).permute({0, 2, 1, 3}).contiguous();
  y = y.view({n, hs, ws, c2});
  if (v2) y = y.permute({0, 2, 1, 3}).contiguous();
  return y;
}

absl::StatusOr<at::Tensor> VisionHiddenState(const VisionModel& model, const at::Tensor& pixel_values) {
  auto& impl = model.impl();
  const int S = impl.config.image_size();
  if (pixel_values.dim() != 4 || pixel_values.size(1) != impl.config.vision.num_channels || pixel_values.size(2) != S ||
      pixel_values.size(3) != S)
    return absl::InvalidArgumentError(absl::StrCat("pixel_values must be [N, ", impl.config.vision.num_channels, ", ",
                                                   S, ", ", S, "], got ", ShapeStr(pixel_values.sizes().vec())));
  return TorchGuard("running the vision model", [&]() -> absl::StatusOr<at::Tensor> {
    at::InferenceMode guard;
    return impl.vision_model->forward(pixel_values.to(impl.device, impl.dtype), impl.layers_to_run);
  });
}

namespace {

// Drop CLS, fold the patch grid, pixel shuffle, flatten: [N,1+P,C] -> [N,T,C*r^2].
at::Tensor ShuffleHidden(const InternVLConfig& config, const at::Tensor& hidden) {
  at::Tensor x = hidden.slice(1, 1);  // drop CLS
  const auto side = static_cast<int64_t>(std::lround(std::sqrt(static_cast<double>(x.size(1)))));
  x = x.reshape({x.size(0), side, side, -1});
  x = PixelShuffle(x, config.downsample_ratio, config.ps_version == "v2");
  return x.reshape({x.size(0), -1, x.size(-1)});
}

}  // namespace

absl::StatusOr<at::Tensor> ExtractFeatureForTraining(const VisionModel& model, const at::Tensor& pixel_values,
                                                     bool backbone_grad) {
  auto& impl = model.impl();
  if (pixel_values.dim() != 4 || pixel_values.size(0) == 0)
    return absl::InvalidArgumentError(
        absl::StrCat("pixel_values must be a non-empty [N,3,S,S] tensor, got ", ShapeStr(pixel_values.sizes().vec())));
  at::Tensor hidden;
  if (backbone_grad) {
    INTERNVL_ASSIGN_OR_RETURN(hidden, TorchGuard("running the vision model", [&] {
                                return impl.vision_model->forward(pixel_values.to(impl.device, impl.dtype),
                                                                  impl.layers_to_run);
                              }));
  } else {
    INTERNVL_ASSIGN_OR_RETURN(at::Tensor frozen, VisionHiddenState(model, pixel_values));
    // An inference tensor cannot be saved for backward: a normal copy can.
    INTERNVL_ASSIGN_OR_RETURN(hidden, TorchGuard("copying vision features", [&] { return frozen.clone(); }));
  }
  return TorchGuard("projecting vision features",
                    [&] { return impl.mlp1->forward(ShuffleHidden(impl.config, hidden)); });
}

std::vector<std::pair<std::string, at::Tensor>> NamedVisionParameters(const VisionModel& model) {
  auto& impl = model.impl();
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& p : impl.vision_model->named_parameters()) out.emplace_back("vision_model." + p.key(), p.value());
  for (const auto& p : impl.mlp1->named_parameters()) out.emplace_back("mlp1." + p.key(), p.value());
  return out;
}

void SetVisionTraining(const VisionModel& model, bool train) {
  model.impl().vision_model->train(train);
  model.impl().mlp1->train(train);
}

absl::StatusOr<at::Tensor> ExtractFeature(const VisionModel& model, const at::Tensor& pixel_values) {
  auto& impl = model.impl();
  if (pixel_values.dim() != 4 || pixel_values.size(0) == 0)
    return absl::InvalidArgumentError(
        absl::StrCat("pixel_values must be a non-empty [N,3,S,S] tensor, got ", ShapeStr(pixel_values.sizes().vec())));
  const int64_t n = pixel_values.size(0);
  std::vector<at::Tensor> chunks;
  for (int64_t start = 0; start < n; start += impl.options.tile_batch) {
    at::Tensor px = pixel_values.slice(0, start, std::min(n, start + impl.options.tile_batch));
    INTERNVL_ASSIGN_OR_RETURN(at::Tensor hidden, VisionHiddenState(model, px));
    INTERNVL_ASSIGN_OR_RETURN(at::Tensor out,
                              TorchGuard("projecting vision features", [&]() -> absl::StatusOr<at::Tensor> {
                                at::InferenceMode guard;
                                return impl.mlp1->forward(ShuffleHidden(impl.config, hidden));
                              }));
    chunks.push_back(out);
  }
  if (chunks.size() == 1) return chunks[0];
  return TorchGuard("concatenating vision features", [&] { return at::cat(chunks, 0); });
}

at::Tensor HostToTensor(const HostTensor& t) {
  auto type = ToScalarType(t.dtype);
  return at::from_blob(const_cast<uint8_t*>(t.bytes.data()), t.shape, at::TensorOptions().dtype(*type));
}

at::Tensor NormalizeTiles(const at::Tensor& tiles_u8, const c10::Device& device) {
  const auto opts = at::TensorOptions().dtype(at::kFloat).device(device);
  at::Tensor mean = at::tensor({kImageNetMean[0], kImageNetMean[1], kImageNetMean[2]}).to(opts).view({1, 3, 1, 1});
  at::Tensor std = at::tensor({kImageNetStd[0], kImageNetStd[1], kImageNetStd[2]}).to(opts).view({1, 3, 1, 1});
  at::Tensor x = tiles_u8.to(device).permute({0, 3, 1, 2}).to(at::kFloat).div_(255.0f);
  return x.sub_(mean).div_(std).contiguous();
}

absl::StatusOr<HostTensor> TensorToHost(const at::Tensor& t) {
  return TorchGuard("copying a tensor to host", [&]() -> absl::StatusOr<HostTensor> {
    at::Tensor c = t.to(at::kCPU).contiguous();
    INTERNVL_ASSIGN_OR_RETURN(DType dtype, FromScalarType(c.scalar_type()));
    HostTensor out(dtype, c.sizes().vec());
    std::memcpy(out.bytes.data(), c.data_ptr(), out.bytes.size());
    return out;
  });
}

bool VisionModel::normalizes_on_device() const { return !UseCpuKernels(impl_->device); }
std::string VisionModel::device_name() const { return impl_->device.str(); }

absl::StatusOr<HostTensor> VisionModel::ExtractFeature(const HostTensor& pixel_values) const {
  const std::vector<int64_t>& s = pixel_values.shape;
  at::Tensor px;
  if (pixel_values.dtype == DType::kU8) {
    if (s.size() != 4 || s[3] != 3 || s[0] < 1)
      return absl::InvalidArgumentError(absl::StrCat("uint8 tiles must be [N, S, S, 3], got ", ShapeStr(s)));
    INTERNVL_ASSIGN_OR_RETURN(
        px, TorchGuard("normalising tiles", [&] { return NormalizeTiles(HostToTensor(pixel_values), impl_->device); }));
  } else if (pixel_values.dtype == DType::kF32) {
    px = HostToTensor(pixel_values);
  } else {
    return absl::InvalidArgumentError("pixel_values must be float32 [N, 3, S, S] or uint8 tiles [N, S, S, 3]");
  }
  INTERNVL_ASSIGN_OR_RETURN(at::Tensor out, ::internvl::ExtractFeature(*this, px));
  return TensorToHost(out);
}

}  // namespace internvl
