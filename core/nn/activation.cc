#include "core/nn/activation.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>

#include "core/nn/device.h"

#if defined(INTERNVL_HAVE_AVX2_ACTIVATION)
#include "core/nn/activation_kernels.h"
#endif

namespace internvl {
namespace {

// The distance between consecutive rows when t is rows of contiguous last
// dimensions evenly spaced; -1 otherwise.
int64_t RowStride(const at::Tensor& t) {
  if (t.dim() == 0 || t.stride(-1) != 1) return -1;
  if (t.dim() == 1) return t.size(0);
  for (int64_t d = 0; d + 2 < t.dim(); ++d) {
    if (t.size(d) > 1 && t.stride(d) != t.stride(d + 1) * t.size(d + 1)) return -1;
  }
  return t.stride(-2);
}

#if defined(INTERNVL_HAVE_AVX2_ACTIVATION)
using RowsFn = void (*)(const uint16_t*, const uint16_t*, int64_t, uint16_t*, int64_t, int64_t);

// The 16-lane kernel where the CPU has AVX-512 (the same bits):
// InternVL2-1B's prefill spent ~5% of its time in the AVX2 one.
RowsFn RowsKernel() {
#if defined(INTERNVL_HAVE_AVX512_ACTIVATION)
  static const RowsFn fn = CpuHasAvx512() ? &act::SwiGluRowsBf16Avx512 : &act::SwiGluRowsBf16Avx2;
  return fn;
#else
  return &act::SwiGluRowsBf16Avx2;
#endif
}
#endif

}  // namespace

bool SwiGluRunsKernel(const at::Tensor& gate, const at::Tensor& up) {
#if defined(INTERNVL_HAVE_AVX2_ACTIVATION)
  return CpuHasAvx2Fma() && gate.defined() && up.defined() && gate.scalar_type() == at::kBFloat16 &&
         up.scalar_type() == at::kBFloat16 && gate.sizes() == up.sizes() && gate.numel() > 0 &&
         UseCpuKernels(gate.device()) && up.device() == gate.device() && !at::GradMode::is_enabled() &&
         RowStride(gate) >= gate.size(-1) && RowStride(gate) == RowStride(up);
#else
  return false;
#endif
}

at::Tensor SwiGlu(const at::Tensor& gate, const at::Tensor& up) {
  if (!SwiGluRunsKernel(gate, up)) {
    if (!at::GradMode::is_enabled()) return at::silu(gate).mul_(up);
    return at::silu(gate) * up;
  }
  at::Tensor out = at::empty(gate.sizes(), gate.options());
#if defined(INTERNVL_HAVE_AVX2_ACTIVATION)
  const int64_t n = gate.size(-1), rows = gate.numel() / n, stride = RowStride(gate);
  const auto* g = reinterpret_cast<const uint16_t*>(gate.data_ptr());
  const auto* u = reinterpret_cast<const uint16_t*>(up.data_ptr());
  auto* o = reinterpret_cast<uint16_t*>(out.data_ptr());
  // One row of a decode step on the calling thread; ~64K elements per task.
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / n);
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    RowsKernel()(g + r0 * stride, u + r0 * stride, stride, o + r0 * n, r1 - r0, n);
  });
#endif
  return out;
}

void SwiGluColumns(const at::Tensor& gate, const at::Tensor& up, const at::Tensor& out, int64_t begin, int64_t end) {
  const int64_t n = gate.size(-1);
  SwiGluBf16Rows(reinterpret_cast<const uint16_t*>(gate.data_ptr()), reinterpret_cast<const uint16_t*>(up.data_ptr()),
                 RowStride(gate), reinterpret_cast<uint16_t*>(out.data_ptr()), n, gate.numel() / n, begin, end);
}

bool SwiGluBf16RowsAvailable() {
#if defined(INTERNVL_HAVE_AVX2_ACTIVATION)
  return CpuHasAvx2Fma() && UseCpuKernels(c10::Device(c10::kCPU));
#else
  return false;
#endif
}

void SwiGluBf16Rows(const uint16_t* gate, const uint16_t* up, int64_t stride, uint16_t* out, int64_t out_stride,
                    int64_t rows, int64_t begin, int64_t end) {
#if defined(INTERNVL_HAVE_AVX2_ACTIVATION)
  for (int64_t r = 0; r < rows; ++r) {
    RowsKernel()(gate + r * stride + begin, up + r * stride + begin, stride, out + r * out_stride + begin, 1,
                 end - begin);
  }
#else
  TORCH_CHECK(false, "SwiGluBf16Rows: the SwiGLU kernel is not built here");
#endif
}

}  // namespace internvl
