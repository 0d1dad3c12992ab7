#include "core/nn/torch_util.h"

#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <ATen/ops/abs.h>
#include <ATen/ops/matmul.h>
#include <c10/util/Exception.h>
#include <dlfcn.h>
#include <malloc.h>
#include <unistd.h>

#include <cstdio>
#include <mutex>

#include "absl/strings/ascii.h"
#include "absl/strings/str_format.h"

namespace internvl {

namespace internal {
absl::Status StatusFromException(const std::exception& e, absl::string_view what) {
  // c10::Error messages carry a long backtrace ("Exception raised from ..."
  // or "frame #0: ..." lines) that means nothing to a client: cut it.
  const auto* c10_error = dynamic_cast<const c10::Error*>(&e);
  std::string msg = c10_error != nullptr ? c10_error->what_without_backtrace() : e.what();
  for (const char* tail : {"\nException raised from", "\nframe #"}) {
    if (auto nl = msg.find(tail); nl != std::string::npos) msg.resize(nl);
  }
  return absl::InternalError(absl::StrCat(what, ": ", msg));
}
}  // namespace internal

bool CpuHasNativeBf16Matmul() {
  static const bool native = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512dq");
  }();
  return native;
}

at::ScalarType EffectiveComputeDType(at::ScalarType requested) {
  if (requested != at::kBFloat16 || CpuHasNativeBf16Matmul()) return requested;
  static std::once_flag logged;
  std::call_once(logged, [] {
    std::fprintf(stderr,
                 "internvl: this CPU has no native bf16 matmul (AVX-512 BW/VL/DQ); computing bf16 weights in fp32\n");
  });
  return at::kFloat;
}

at::ScalarType EffectiveComputeDType(at::ScalarType requested, const c10::Device& device) {
  return device.is_cpu() ? EffectiveComputeDType(requested) : requested;
}

void TuneAllocator() {
  static std::once_flag once;
  std::call_once(once, [] {
    // Model temporaries (activations of 1-32 MB) are freed and reallocated
    // every layer. glibc's default starts mmap-ing blocks at 128 KB (raising
    // the threshold only as it sees frees) and trims the heap top eagerly, so
    // the kernel zeroes fresh pages over and over (~40% of the official
    // code's CPU time). Serve everything under 32 MB from the heap and keep
    // up to 1 GiB of freed heap for reuse.
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
  });
}

std::string BlasThreading() {
  // OpenBLAS's own entry points, looked up in the loaded libraries (libtorch
  // reaches BLAS through libblas.so.3, whichever build it resolves to).
  using GetParallel = int (*)();
  auto get_parallel = reinterpret_cast<GetParallel>(::dlsym(RTLD_DEFAULT, "openblas_get_parallel"));
  if (get_parallel == nullptr) return "not OpenBLAS";
  switch (get_parallel()) {
    case 0:
      return "OpenBLAS, sequential";
    case 1:
      return "OpenBLAS, own pthreads";
    case 2:
      return "OpenBLAS, OpenMP";
    default:
      return "OpenBLAS";
  }
}

void SetTorchThreads(int n) {
  TuneAllocator();
  if (n <= 0) n = static_cast<int>(::sysconf(_SC_NPROCESSORS_ONLN));
  if (n < 1) n = 1;
  at::set_num_threads(n);
  // libtorch sets only OpenMP's count: OpenBLAS's pthread build would keep
  // one thread per core whatever --threads says.
  using SetThreads = void (*)(int);
  if (auto set_blas = reinterpret_cast<SetThreads>(::dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) set_blas(n);
  static std::once_flag warned;
  if (BlasThreading() == "OpenBLAS, own pthreads" && n > 1) {
    std::call_once(warned, [] {
      std::fprintf(stderr,
                   "internvl: libblas.so.3 is OpenBLAS's pthread build: its threads compete with libtorch's OpenMP "
                   "threads and fp32 matmuls run at about half speed; install libopenblas0-openmp "
                   "(cmake/deps.cmake)\n");
    });
  }
}

int TorchThreads() { return at::get_num_threads(); }

absl::StatusOr<at::ScalarType> ToScalarType(DType dtype) {
  switch (dtype) {
    case DType::kF64:
      return at::kDouble;
    case DType::kF32:
      return at::kFloat;
    case DType::kF16:
      return at::kHalf;
    case DType::kBF16:
      return at::kBFloat16;
    case DType::kI64:
      return at::kLong;
    case DType::kI32:
      return at::kInt;
    case DType::kI16:
      return at::kShort;
    case DType::kI8:
      return at::kChar;
    case DType::kU8:
      return at::kByte;
    case DType::kBool:
      return at::kBool;
  }
  return absl::InvalidArgumentError("unknown dtype");
}

absl::StatusOr<DType> FromScalarType(at::ScalarType type) {
  switch (type) {
    case at::kDouble:
      return DType::kF64;
    case at::kFloat:
      return DType::kF32;
    case at::kHalf:
      return DType::kF16;
    case at::kBFloat16:
      return DType::kBF16;
    case at::kLong:
      return DType::kI64;
    case at::kInt:
      return DType::kI32;
    case at::kShort:
      return DType::kI16;
    case at::kChar:
      return DType::kI8;
    case at::kByte:
      return DType::kU8;
    case at::kBool:
      return DType::kBool;
    default:
      return absl::InvalidArgumentError(absl::StrCat("no safetensors dtype for ", c10::toString(type)));
  }
}

absl::StatusOr<at::ScalarType> ParseComputeDType(absl::string_view name) {
  std::string n = absl::AsciiStrToLower(name);
  if (n == "fp32" || n == "float32" || n == "float") return at::kFloat;
  if (n == "bf16" || n == "bfloat16") return at::kBFloat16;
  return absl::InvalidArgumentError(absl::StrCat("unknown dtype '", name, "' (expected fp32 or bf16)"));
}

at::Tensor TensorAlias(const TensorView& view) {
  auto type = ToScalarType(view.dtype);
  return at::from_blob(const_cast<uint8_t*>(view.data), view.shape, at::TensorOptions().dtype(*type));
}

at::Tensor TensorFromView(const TensorView& view, at::ScalarType dtype) {
  at::Tensor alias = TensorAlias(view);
  if (alias.scalar_type() == dtype) return alias.clone();
  return alias.to(dtype);
}

void SafetensorsWriter::Add(const std::string& name, const at::Tensor& tensor) {
  tensors_.emplace_back(name, tensor.detach().to(at::kCPU).contiguous());
}

absl::Status SafetensorsWriter::Write(const std::string& path,
                                      const std::map<std::string, std::string>& metadata) const {
  std::vector<TensorRef> refs;
  for (const auto& [name, t] : tensors_) {
    auto dtype = FromScalarType(t.scalar_type());
    if (!dtype.ok()) return dtype.status();
    refs.push_back(TensorRef{name, *dtype, t.sizes().vec(),
                             absl::Span<const uint8_t>(static_cast<const uint8_t*>(t.data_ptr()), t.nbytes())});
  }
  return WriteSafetensors(path, refs, metadata);
}

std::string Diff::ToString() const {
  return absl::StrFormat("max_abs=%.3g mean_abs=%.3g ref_max_abs=%.3g rel=%.3g", max_abs, mean_abs, ref_max_abs,
                         ref_max_abs > 0 ? max_abs / ref_max_abs : max_abs);
}

Diff CompareTensors(const at::Tensor& actual, const at::Tensor& expected) {
  at::Tensor a = actual.to(at::kCPU, at::kDouble), e = expected.to(at::kCPU, at::kDouble);
  at::Tensor d = at::abs(a - e);
  Diff out;
  out.max_abs = d.max().item<double>();
  out.mean_abs = d.mean().item<double>();
  out.ref_max_abs = at::abs(e).max().item<double>();
  return out;
}

at::Tensor MatmulFp32Accumulate(const at::Tensor& a, const at::Tensor& b) {
  const bool native = !a.device().is_cpu() || (CpuHasNativeBf16Matmul() && at::globalContext().userEnabledMkldnn());
  if (a.scalar_type() != at::kBFloat16 || native) return at::matmul(a, b);
  return at::matmul(a.to(at::kFloat), b.to(at::kFloat)).to(a.scalar_type());
}

}  // namespace internvl
