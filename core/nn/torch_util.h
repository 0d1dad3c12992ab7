// The libtorch boundary: c10::Error never crosses it (STYLE.md rule 3).
#pragma once

#include <ATen/core/Tensor.h>

#include <exception>
#include <string>
#include <type_traits>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "core/safetensors.h"

namespace internvl {

namespace internal {
absl::Status StatusFromException(const std::exception& e, absl::string_view what);
}  // namespace internal

template <typename T>
struct IsStatusOr : std::false_type {};
template <typename T>
struct IsStatusOr<absl::StatusOr<T>> : std::true_type {};

// Runs `fn` and turns any libtorch exception into an INTERNAL status naming
// `what`. `fn` returns void or absl::Status (-> absl::Status), absl::StatusOr<T>
// (-> the same), or a plain T (-> absl::StatusOr<T>).
template <typename Fn>
auto TorchGuard(absl::string_view what, Fn&& fn) {
  using R = std::invoke_result_t<Fn>;
  if constexpr (std::is_void_v<R> || std::is_same_v<R, absl::Status>) {
    try {
      if constexpr (std::is_void_v<R>) {
        fn();
        return absl::OkStatus();
      } else {
        return fn();
      }
    } catch (const std::exception& e) {
      return internal::StatusFromException(e, what);
    }
  } else {
    using Out = std::conditional_t<IsStatusOr<R>::value, R, absl::StatusOr<R>>;
    try {
      return Out(fn());
    } catch (const std::exception& e) {
      return Out(internal::StatusFromException(e, what));
    }
  }
}

// Tunes glibc malloc for model inference (see the .cc); idempotent. Called
// by SetTorchThreads.
void TuneAllocator();

// Sets libtorch's intra-op thread count (it starts at 1 on these machines).
// n <= 0 picks the number of online cores.
// Also sets OpenBLAS's count, and warns once when libblas.so.3 resolved to
// OpenBLAS's pthread build (its threads fight libtorch's OpenMP threads).
void SetTorchThreads(int n);
int TorchThreads();

// The BLAS behind libtorch's fp32 matmuls and how it threads, for benchmarks
// to print: "OpenBLAS, OpenMP", "OpenBLAS, own pthreads", "not OpenBLAS", ...
std::string BlasThreading();

// Whether libtorch runs bf16 matmuls natively here (oneDNN needs AVX-512
// BW/VL/DQ; with AMX-BF16 it reaches ~1 TFLOP/s on 2 cores). Without it
// libtorch falls back to a scalar bf16 GEMM (~4 GFLOP/s measured on an AVX2
// EPYC), so bf16 checkpoints are then computed in fp32 from bf16 weights.
bool CpuHasNativeBf16Matmul();

// a @ b (at::matmul) with bf16 inputs multiplied as oneDNN does: products
// accumulated in fp32, rounded once. Where libtorch does not use oneDNN
// (CPUs without AVX-512 BW/VL/DQ, or oneDNN disabled) its 1.13 fallback GEMM
// adds every product into the bf16 output itself, so a sum over 1-2k keys
// (probs @ V on a long image prompt) drifts by 10-30% of the logit scale;
// there the product runs on fp32 copies. Other dtypes, and tensors on other
// devices (cuBLAS accumulates bf16 in fp32): at::matmul.
at::Tensor MatmulFp32Accumulate(const at::Tensor& a, const at::Tensor& b);

// The dtype to compute in for a requested dtype: bf16 degrades to fp32 where
// the CPU has no native bf16 matmul (logged once). Other devices (CUDA)
// compute in the requested dtype.
at::ScalarType EffectiveComputeDType(at::ScalarType requested);
at::ScalarType EffectiveComputeDType(at::ScalarType requested, const c10::Device& device);

// dtype conversions between safetensors and ATen.
absl::StatusOr<at::ScalarType> ToScalarType(DType dtype);
absl::StatusOr<DType> FromScalarType(at::ScalarType type);
// "fp32"/"float32" -> kFloat, "bf16"/"bfloat16" -> kBFloat16.
absl::StatusOr<at::ScalarType> ParseComputeDType(absl::string_view name);

// Copies a mapped tensor into a new contiguous tensor of `dtype`.
at::Tensor TensorFromView(const TensorView& view, at::ScalarType dtype);
// Wraps a mapped tensor without copying (read-only use; lifetime of the file).
at::Tensor TensorAlias(const TensorView& view);

// Owned host tensors for writing: keeps each contiguous tensor alive until
// written.
class SafetensorsWriter {
 public:
  void Add(const std::string& name, const at::Tensor& tensor);
  absl::Status Write(const std::string& path, const std::map<std::string, std::string>& metadata = {}) const;

 private:
  std::vector<std::pair<std::string, at::Tensor>> tensors_;
};

// Max abs difference and max abs of the reference, for parity reporting.
struct Diff {
  double max_abs = 0;
  double mean_abs = 0;
  double ref_max_abs = 0;
  std::string ToString() const;
};
Diff CompareTensors(const at::Tensor& actual, const at::Tensor& expected);

}  // namespace internvl
