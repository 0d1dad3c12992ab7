#include "core/nn/norm.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>

#include "core/nn/device.h"

#if defined(INTERNVL_HAVE_AVX2_NORM)
#include "core/nn/norm_kernels.h"
#endif

namespace internvl {

bool LayerNormRunsKernel(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
#if defined(INTERNVL_HAVE_AVX2_NORM)
  const auto bf16_contiguous = [](const at::Tensor& t) {
    return t.defined() && t.scalar_type() == at::kBFloat16 && t.is_contiguous();
  };
  return CpuHasAvx2Fma() && bf16_contiguous(x) && bf16_contiguous(weight) && bf16_contiguous(bias) && x.dim() >= 1 &&
         x.numel() > 0 && weight.numel() == x.size(-1) && bias.numel() == x.size(-1) && UseCpuKernels(x.device()) &&
         weight.device() == x.device() && bias.device() == x.device() && !at::GradMode::is_enabled();
#else
  return false;
#endif
}

at::Tensor LayerNormLastDim(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double eps) {
  if (!LayerNormRunsKernel(x, weight, bias)) return at::layer_norm(x, {x.size(-1)}, weight, bias, eps);
  at::Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
#if defined(INTERNVL_HAVE_AVX2_NORM)
  const int64_t n = x.size(-1), rows = x.numel() / n;
  const auto* in = reinterpret_cast<const uint16_t*>(x.data_ptr());
  const auto* w = reinterpret_cast<const uint16_t*>(weight.data_ptr());
  const auto* b = reinterpret_cast<const uint16_t*>(bias.data_ptr());
  auto* out = reinterpret_cast<uint16_t*>(y.data_ptr());
  // ~16K elements per task (a 1024-wide row is ~0.3 us).
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 14) / n);
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    norm::LayerNormRowsBf16Avx2(in + r0 * n, w, b, out + r0 * n, r1 - r0, n, static_cast<float>(eps));
  });
#endif
  return y;
}

}  // namespace internvl
