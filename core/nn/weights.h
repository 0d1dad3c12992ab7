// Loading checkpoint tensors into torch::nn::Module trees by HF key name:
// modules register submodules under the checkpoint's names (STYLE.md rule 1),
// so loading is a name lookup, not a mapping table.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "core/safetensors.h"

namespace torch::nn {
class Module;
}

namespace internvl {

// Copies every parameter and buffer of `module` from `store[prefix + name]`,
// converted to `dtype` and placed on `device`. Missing keys, shape mismatches and checkpoint keys
// under `prefix` that the module does not have are all errors, listed by name.
// `ignore_unexpected` lists checkpoint keys (without prefix) to tolerate;
// `skip` lists module parameters (without prefix) loaded by other means (the
// AWQ layers' weights), left as they are.
absl::Status LoadModuleWeights(torch::nn::Module& module, const TensorStore& store, const std::string& prefix,
                               at::ScalarType dtype, const std::vector<std::string>& ignore_unexpected = {},
                               const std::vector<std::string>& skip = {},
                               const c10::Device& device = c10::Device(c10::kCPU));

// sha256-free fingerprint of the tensors under `prefix` (names, shapes,
// dtypes and a 64-bit hash of their bytes), for cache keys.
std::string WeightsFingerprint(const TensorStore& store, const std::string& prefix);

}  // namespace internvl
