#include "core/nn/device.h"

#include <torch/csrc/api/include/torch/cuda.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include <atomic>
#include <cstdlib>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/nn/torch_compat.h"
#include "core/nn/torch_util.h"

#ifdef INTERNVL_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace internvl {
namespace {

// -1: not forced (the environment decides); 0/1: forced.
std::atomic<int> g_generic{-1};

bool GenericFromEnv() {
  static const bool generic = [] {
    const char* v = std::getenv("INTERNVL_KERNELS");
    return v != nullptr && std::strcmp(v, "generic") == 0;
  }();
  return generic;
}

}  // namespace

bool BuiltWithCuda() {
#ifdef INTERNVL_WITH_CUDA
  return true;
#else
  return false;
#endif
}

int CudaDeviceCount() {
  if (!BuiltWithCuda()) return 0;
  auto n = TorchGuard("counting GPUs", [] { return static_cast<int>(torch::cuda::device_count()); });
  return n.ok() ? *n : 0;
}

absl::StatusOr<c10::Device> ParseDevice(absl::string_view name) {
  const std::string n = absl::AsciiStrToLower(absl::StripAsciiWhitespace(name));
  if (n == "cpu") return c10::Device(c10::kCPU);
  int index = 0;
  if (n == "cuda") {
    index = 0;
  } else if (n.rfind("cuda:", 0) == 0 && absl::SimpleAtoi(n.substr(5), &index) && index >= 0 && index < 64) {
  } else {
    return absl::InvalidArgumentError(absl::StrCat("unknown device '", name, "' (expected cpu, cuda or cuda:N)"));
  }
  if (!BuiltWithCuda()) {
    return absl::FailedPreconditionError(
        absl::StrCat("device '", name,
                     "': this build's libtorch has no CUDA (build against a CUDA libtorch: scripts/gpu_check.sh)"));
  }
  const int count = CudaDeviceCount();
  if (index >= count) {
    return absl::FailedPreconditionError(
        absl::StrCat("device '", name, "': ", count, " CUDA device(s) visible to this process"));
  }
  return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(index));
}

absl::StatusOr<DeviceMemory> QueryDeviceMemory(const c10::Device& device) {
  if (!device.is_cuda()) return absl::FailedPreconditionError("device memory is queried for CUDA devices only");
#ifdef INTERNVL_WITH_CUDA
  int previous = 0;
  if (cudaGetDevice(&previous) != cudaSuccess) return absl::InternalError("cudaGetDevice failed");
  const int index = device.has_index() ? device.index() : 0;
  if (cudaSetDevice(index) != cudaSuccess)
    return absl::InternalError(absl::StrCat("cudaSetDevice(", index, ") failed"));
  size_t free_bytes = 0, total_bytes = 0;
  const cudaError_t err = cudaMemGetInfo(&free_bytes, &total_bytes);
  cudaSetDevice(previous);
  if (err != cudaSuccess) return absl::InternalError(absl::StrCat("cudaMemGetInfo: ", cudaGetErrorString(err)));
  return DeviceMemory{static_cast<int64_t>(free_bytes), static_cast<int64_t>(total_bytes)};
#else
  return absl::FailedPreconditionError("this build has no CUDA");
#endif
}

std::string DeviceDescription(const c10::Device& device) {
  if (device.is_cpu()) return GenericKernels() ? "cpu (generic kernels)" : "cpu";
  std::string out = device.str();
#ifdef INTERNVL_WITH_CUDA
  if (device.is_cuda()) {
    cudaDeviceProp prop;
    const int index = device.has_index() ? device.index() : 0;
    if (cudaGetDeviceProperties(&prop, index) == cudaSuccess) {
      absl::StrAppend(&out,
                      absl::StrFormat(" (%s, %.1f GiB, %d SMs)", prop.name,
                                      static_cast<double>(prop.totalGlobalMem) / (1 << 30), prop.multiProcessorCount));
    }
  }
#endif
  return out;
}

void SynchronizeDevice(const c10::Device& device) {
  if (!device.is_cuda()) return;
  (void)TorchGuard("synchronizing", [&] { torch::cuda::synchronize(device.has_index() ? device.index() : -1); });
}

absl::Status PrepareDevice(const c10::Device& device) {
  if (!device.is_cuda()) return absl::OkStatus();
#ifdef INTERNVL_WITH_CUDA
  const int index = device.has_index() ? device.index() : 0;
  if (cudaError_t err = cudaSetDevice(index); err != cudaSuccess)
    return absl::FailedPreconditionError(absl::StrCat("cudaSetDevice(", index, "): ", cudaGetErrorString(err)));
#endif
  return TorchGuard("preparing the device", [] { torch_compat::DisableTf32(); });
}

bool GenericKernels() {
  const int forced = g_generic.load(std::memory_order_relaxed);
  return forced >= 0 ? forced == 1 : GenericFromEnv();
}

void ForceGenericKernels(bool generic) { g_generic.store(generic ? 1 : 0); }

#if defined(__x86_64__) || defined(__i386__)
bool CpuHasAvx2Fma() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}

bool CpuHasAvx512() {
  static const bool has =
      __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
  return has;
}

bool CpuHasAvx512Bf16() {
  static const bool has = CpuHasAvx512() && __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("fma");
  return has;
}

bool CpuHasAmxBf16() {
  static const bool has = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;  // CPUID leaf 7: EDX bit 22 = AMX-BF16
    return __get_cpuid_count(7, 0, &a, &b, &c, &d) != 0 && (d & (1u << 22)) != 0;
  }();
  return has;
}
#else
bool CpuHasAvx2Fma() { return false; }
bool CpuHasAvx512() { return false; }
bool CpuHasAvx512Bf16() { return false; }
bool CpuHasAmxBf16() { return false; }
#endif

}  // namespace internvl
