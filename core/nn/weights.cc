#include "core/nn/weights.h"

#include <torch/nn/module.h>

#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/files.h"
#include "core/nn/torch_util.h"

namespace internvl {
namespace {

std::string ListNames(const std::vector<std::string>& names) {
  constexpr size_t kShown = 20;
  std::vector<std::string> shown(names.begin(), names.begin() + std::min(names.size(), kShown));
  std::string out = absl::StrJoin(shown, ", ");
  if (names.size() > kShown) absl::StrAppend(&out, ", ... (", names.size() - kShown, " more)");
  return out;
}

std::string ShapeString(at::IntArrayRef s) { return absl::StrCat("[", absl::StrJoin(s, ","), "]"); }

}  // namespace

absl::Status LoadModuleWeights(torch::nn::Module& module, const TensorStore& store, const std::string& prefix,
                               at::ScalarType dtype, const std::vector<std::string>& ignore_unexpected,
                               const std::vector<std::string>& skip, const c10::Device& device) {
  return TorchGuard("loading weights", [&]() -> absl::Status {
    at::NoGradGuard no_grad;
    std::vector<std::string> missing, mismatched;
    std::set<std::string> consumed;
    auto load_one = [&](const std::string& name, at::Tensor& target, bool is_param) {
      const std::string key = prefix + name;
      const TensorView* view = store.Find(key);
      if (view == nullptr) {
        missing.push_back(key);
        return;
      }
      consumed.insert(key);
      if (at::IntArrayRef(view->shape) != target.sizes()) {
        mismatched.push_back(
            absl::StrCat(key, " (checkpoint ", ShapeString(view->shape), ", model ", ShapeString(target.sizes()), ")"));
        return;
      }
      at::Tensor value = device.is_cpu() ? TensorFromView(*view, dtype) : TensorAlias(*view).to(device, dtype);
      // Copied: the checkpoint's mapped pages need not stay resident beside
      // the weights (they would double the peak RSS of loading).
      ReleaseMappedPages(view->data, view->nbytes);
      target.set_data(value);
    };
    const std::set<std::string> skipped(skip.begin(), skip.end());
    for (auto& item : module.named_parameters(/*recurse=*/true)) {
      if (!skipped.count(item.key())) load_one(item.key(), item.value(), true);
    }
    for (auto& item : module.named_buffers(/*recurse=*/true)) load_one(item.key(), item.value(), false);
    std::vector<std::string> unexpected;
    std::set<std::string> ignored;
    for (const auto& n : ignore_unexpected) ignored.insert(prefix + n);
    for (const std::string& name : store.Names()) {
      if (name.rfind(prefix, 0) == 0 && !consumed.count(name) && !ignored.count(name)) unexpected.push_back(name);
    }
    if (missing.empty() && mismatched.empty() && unexpected.empty()) return absl::OkStatus();
    std::string msg = absl::StrCat("checkpoint ", store.description(), " does not match the model");
    if (!missing.empty()) absl::StrAppend(&msg, "; missing keys: ", ListNames(missing));
    if (!mismatched.empty()) absl::StrAppend(&msg, "; shape mismatches: ", ListNames(mismatched));
    if (!unexpected.empty()) absl::StrAppend(&msg, "; unexpected keys: ", ListNames(unexpected));
    return absl::InvalidArgumentError(msg);
  });
}

std::string WeightsFingerprint(const TensorStore& store, const std::string& prefix) {
  // FNV-1a over names, shapes, dtypes and sampled bytes: cheap on multi-GB
  // checkpoints (every 4 KiB page contributes its first 64 bytes).
  uint64_t h = 1469598103934665603ull;
  auto mix = [&](const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    for (size_t i = 0; i < n; ++i) {
      h ^= b[i];
      h *= 1099511628211ull;
    }
  };
  for (const std::string& name : store.Names()) {
    if (name.rfind(prefix, 0) != 0) continue;
    const TensorView* v = store.Find(name);
    mix(name.data(), name.size());
    mix(v->shape.data(), v->shape.size() * sizeof(int64_t));
    int d = static_cast<int>(v->dtype);
    mix(&d, sizeof(d));
    constexpr size_t kPage = 4096, kSample = 64;
    for (size_t off = 0; off < v->nbytes; off += kPage) mix(v->data + off, std::min(kSample, v->nbytes - off));
  }
  return absl::StrFormat("%016x", h);
}

}  // namespace internvl
