// The one place where libtorch versions differ for this project: the Debian
// CPU libtorch 1.13 that CI builds against, and the CUDA libtorch 2.x that
// Python's torch ships on GPU machines (scripts/gpu_check.sh). Everything
// else calls these shims instead of testing TORCH_VERSION_* itself.
#pragma once

#include <ATen/Context.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/Tensor.h>
#include <torch/csrc/api/include/torch/version.h>

#define INTERNVL_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) || (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

// at::scaled_dot_product_attention(q, k, v, attn_mask): Torch 2.0 and later.
#define INTERNVL_TORCH_HAS_SDPA INTERNVL_TORCH_AT_LEAST(2, 0)

namespace internvl::torch_compat {

// Autocast (the trainer's bf16 mixed precision) for one device type. Torch
// 2.4 replaced the per-device functions (set_cpu_enabled, set_autocast_cpu_dtype,
// is_cpu_enabled) by ones taking the device type; 1.13 has only those.
inline bool AutocastEnabled(c10::DeviceType type) {
#if INTERNVL_TORCH_AT_LEAST(2, 4)
  return at::autocast::is_autocast_enabled(type);
#else
  return type == c10::DeviceType::CUDA ? at::autocast::is_enabled() : at::autocast::is_cpu_enabled();
#endif
}

inline void SetAutocast(c10::DeviceType type, bool enabled, at::ScalarType dtype) {
#if INTERNVL_TORCH_AT_LEAST(2, 4)
  at::autocast::set_autocast_enabled(type, enabled);
  if (enabled) at::autocast::set_autocast_dtype(type, dtype);
#else
  if (type == c10::DeviceType::CUDA) {
    at::autocast::set_enabled(enabled);
    if (enabled) at::autocast::set_autocast_gpu_dtype(dtype);
  } else {
    at::autocast::set_cpu_enabled(enabled);
    if (enabled) at::autocast::set_autocast_cpu_dtype(dtype);
  }
#endif
}

// fp32 matmuls and convolutions in true fp32 on CUDA (no TF32): the parity
// tests' tolerances are the CPU's. Harmless on a CPU-only libtorch.
inline void DisableTf32() {
  at::globalContext().setAllowTF32CuBLAS(false);
  at::globalContext().setAllowTF32CuDNN(false);
}

}  // namespace internvl::torch_compat
