// Where the models run: "cpu" or "cuda[:N]" (the --device flag of chat,
// serve, the services, the trainer and the benches), and the kernel family
// on the CPU.
//
// Weights, KV blocks and activations live on the model's device; host <->
// device copies happen only at stage boundaries (token ids and image rows
// in, logits and embeddings out). The hand-written CPU kernels (gemv.h,
// quant.h, the split-softmax decode attention) run only on CPU tensors; on
// any other device, and on the CPU with GenericKernels(), libtorch's own ops
// run instead, so the CPU tests exercise the code a GPU runs.
#pragma once

#include <c10/core/Device.h>

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace internvl {

// "cpu", "cuda" (= cuda:0) or "cuda:N". INVALID_ARGUMENT for anything else;
// FAILED_PRECONDITION when this build's libtorch has no CUDA or no GPU N is
// visible (the message says which).
absl::StatusOr<c10::Device> ParseDevice(absl::string_view name);

// Whether this build's libtorch was built with CUDA (a CUDA libtorch linked),
// and how many GPUs it sees (0 without CUDA).
bool BuiltWithCuda();
int CudaDeviceCount();

// "cpu" or "cuda:0 (NVIDIA H200, 139.8 GiB)": for logs and benchmark output.
std::string DeviceDescription(const c10::Device& device);

// Free and total memory of a CUDA device in bytes (cudaMemGetInfo);
// FAILED_PRECONDITION for the CPU or a build without CUDA.
struct DeviceMemory {
  int64_t free_bytes = 0;
  int64_t total_bytes = 0;
};
absl::StatusOr<DeviceMemory> QueryDeviceMemory(const c10::Device& device);

// Waits for the work queued on `device` (timing in benchmarks). No-op on CPU.
void SynchronizeDevice(const c10::Device& device);

// Prepares a device for the models: on CUDA selects it as the current device
// and turns TF32 off (fp32 stays fp32, as the parity tolerances assume).
absl::Status PrepareDevice(const c10::Device& device);

// True when the CPU runs libtorch's generic ops instead of this project's
// CPU kernels: INTERNVL_KERNELS=generic in the environment, or
// ForceGenericKernels(true). Tests use it to run on the CPU the code paths a
// GPU takes; results agree with the CPU kernels within fp32 rounding.
bool GenericKernels();
void ForceGenericKernels(bool generic);

// Whether this CPU runs AVX2 and FMA: the condition of core/nn's CPU kernels
// (softmax, LayerNorm, SwiGLU), each compiled for AVX2/FMA in its own file.
bool CpuHasAvx2Fma();
// Whether it runs AVX-512F/BW/VL: the condition of the 16-lane softmax
// (softmax_avx512.cc).
bool CpuHasAvx512();
// Whether it runs AVX-512-BF16 as well (and FMA): the condition of the fused
// bf16 attention (attention.h).
bool CpuHasAvx512Bf16();
// Whether it has AMX-BF16 tiles (where oneDNN's bf16 matmuls run on them:
// the fused attention stays off by default, attention.h).
bool CpuHasAmxBf16();

// Whether the project's CPU kernels may run on tensors of `device`.
inline bool UseCpuKernels(const c10::Device& device) { return device.is_cpu() && !GenericKernels(); }

}  // namespace internvl
