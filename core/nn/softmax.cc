#include "core/nn/softmax.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "core/nn/device.h"

#if defined(INTERNVL_HAVE_AVX2_SOFTMAX)
#include "core/nn/softmax_kernels.h"
#endif

namespace internvl {
namespace {

bool RunsInPlace(const at::Tensor& t, at::ScalarType dtype) {
#if defined(INTERNVL_HAVE_AVX2_SOFTMAX)
  return t.defined() && t.dim() >= 1 && t.numel() > 0 && t.scalar_type() == dtype && t.is_contiguous() &&
         UseCpuKernels(t.device()) && !at::GradMode::is_enabled() && CpuHasAvx2Fma();
#else
  return false;
#endif
}

// The rows of t in parallel, ~16K elements per task (a 1025-wide row is
// ~1.5 us).
template <typename F>
void ForRows(const at::Tensor& t, F rows_fn) {
  const int64_t n = t.size(-1), rows = t.numel() / n;
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 14) / n);
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) { rows_fn(r0, r1, n); });
}

// The 16-lane kernels where the CPU has AVX-512 (unless
// INTERNVL_SOFTMAX_KERNEL=avx2): on InternViT's [1025, 1025] score rows, one
// thread on a Zen 4, 1.25-1.6x the AVX2 kernel's speed in fp32 and 1.4-1.5x
// in bf16 (alternated in one process).
bool UseAvx512() {
#if defined(INTERNVL_HAVE_AVX512_SOFTMAX)
  static const bool use = [] {
    const char* env = std::getenv("INTERNVL_SOFTMAX_KERNEL");
    return CpuHasAvx512() && !(env != nullptr && std::strcmp(env, "avx2") == 0);
  }();
  return use;
#else
  return false;
#endif
}

}  // namespace

const char* SoftmaxKernelName() {
#if defined(INTERNVL_HAVE_AVX2_SOFTMAX)
  if (!GenericKernels() && CpuHasAvx2Fma()) return UseAvx512() ? "avx512" : "avx2";
#endif
  return "libtorch";
}

bool SoftmaxRunsInPlace(const at::Tensor& t) { return RunsInPlace(t, at::kFloat); }

at::Tensor SoftmaxLastDimFp32(const at::Tensor& t) {
  if (!SoftmaxRunsInPlace(t)) return at::softmax(t, -1, at::kFloat);
#if defined(INTERNVL_HAVE_AVX2_SOFTMAX)
  float* x = t.data_ptr<float>();
  ForRows(t, [x](int64_t r0, int64_t r1, int64_t n) {
#if defined(INTERNVL_HAVE_AVX512_SOFTMAX)
    if (UseAvx512()) return softmax::SoftmaxRowsAvx512(x + r0 * n, r1 - r0, n);
#endif
    softmax::SoftmaxRowsAvx2(x + r0 * n, r1 - r0, n);
  });
#endif
  return t;
}

at::Tensor SoftmaxLastDimBf16(const at::Tensor& t) {
  if (!RunsInPlace(t, at::kBFloat16)) return at::softmax(t, -1);
#if defined(INTERNVL_HAVE_AVX2_SOFTMAX)
  auto* x = reinterpret_cast<uint16_t*>(t.data_ptr());
  ForRows(t, [x](int64_t r0, int64_t r1, int64_t n) {
#if defined(INTERNVL_HAVE_AVX512_SOFTMAX)
    if (UseAvx512()) return softmax::SoftmaxRowsBf16Avx512(x + r0 * n, r1 - r0, n);
#endif
    softmax::SoftmaxRowsBf16Avx2(x + r0 * n, r1 - r0, n);
  });
#endif
  return t;
}

at::Tensor SoftmaxLastDimTo(const at::Tensor& t, at::ScalarType dtype) {
  if (dtype == at::kBFloat16 && RunsInPlace(t, at::kBFloat16)) return SoftmaxLastDimBf16(t);
  return SoftmaxLastDimFp32(t).to(dtype);
}

}  // namespace internvl
