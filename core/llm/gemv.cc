#include "core/llm/gemv.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <vector>

#include "core/llm/chunk_pool.h"
#include "core/llm/gemv_kernels.h"
#include "core/nn/torch_util.h"

namespace internvl::llm {
namespace gemv {

void RowsPortable(const Problem& p, int64_t row_begin, int64_t row_end) {
  const auto* w32 = static_cast<const float*>(p.w);
  const auto* w16 = static_cast<const uint16_t*>(p.w);
  for (int64_t r = row_begin; r < row_end; ++r) {
    for (int64_t m = 0; m < p.m; ++m) {
      const float* x = p.x + m * p.in;
      // Eight partial sums, as the vector kernel keeps, so that both round
      // alike on long rows.
      float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (int64_t k = 0; k < p.in; ++k) {
        float w;
        if (p.w_bf16) {
          const uint32_t bits = static_cast<uint32_t>(w16[r * p.in + k]) << 16;
          std::memcpy(&w, &bits, sizeof(w));
        } else {
          w = w32[r * p.in + k];
        }
        acc[k & 7] += w * x[k];
      }
      float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
      if (p.bias != nullptr) s += p.bias[r];
      p.y[m * p.out + r] = s;
    }
  }
}

#ifndef INTERNVL_HAVE_AVX2_GEMV
void RowsAvx2(const Problem& p, int64_t row_begin, int64_t row_end) { RowsPortable(p, row_begin, row_end); }
bool CpuHasAvx2Fma() { return false; }
#else
bool CpuHasAvx2Fma() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return has;
}
#endif

}  // namespace gemv

namespace {

std::atomic<bool> g_fast_linear{true};

bool Supported(at::ScalarType t) { return t == at::kFloat || t == at::kBFloat16; }

}  // namespace

void SetFastLinearEnabled(bool enabled) { g_fast_linear.store(enabled); }
bool FastLinearEnabled() { return g_fast_linear.load(); }
const char* FastLinearKernel() { return gemv::CpuHasAvx2Fma() ? "avx2" : "portable"; }

at::Tensor FastLinear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  if (!g_fast_linear.load(std::memory_order_relaxed) || at::GradMode::is_enabled()) return {};
  if (!x.defined() || !w.defined() || x.dim() < 1 || w.dim() != 2 || !x.device().is_cpu() || !w.device().is_cpu()) {
    return {};
  }
  const int64_t out = w.size(0), in = w.size(1);
  if (in == 0 || out == 0 || x.size(-1) != in || !w.is_contiguous()) return {};
  if (!Supported(x.scalar_type()) || !Supported(w.scalar_type())) return {};
  if (b.defined() && (b.dim() != 1 || b.size(0) != out || !Supported(b.scalar_type()) || !b.device().is_cpu())) {
    return {};
  }
  const int64_t rows = x.numel() / in;
  if (rows < 1 || rows > kMaxFastLinearRows) return {};

  const at::Tensor xf = x.reshape({rows, in}).to(at::kFloat).contiguous();
  const at::Tensor bf = b.defined() ? b.to(at::kFloat).contiguous() : at::Tensor();
  at::Tensor y = at::empty({rows, out}, xf.options());
  gemv::Problem p;
  p.x = xf.data_ptr<float>();
  p.m = rows;
  p.in = in;
  p.out = out;
  p.w = w.data_ptr();
  p.w_bf16 = w.scalar_type() == at::kBFloat16;
  p.bias = bf.defined() ? bf.data_ptr<float>() : nullptr;
  p.y = y.data_ptr<float>();
  const bool avx2 = gemv::CpuHasAvx2Fma();
  // Chunks of whole 4-row blocks, each at least ~64K weights (claiming one
  // costs ~0.1 us, 64K bf16 weights take ~5 us to stream), at most ~32 per
  // thread.
  const int threads = at::get_num_threads();
  int64_t chunk_rows = std::max<int64_t>((int64_t{1} << 16) / in, (out + 32 * threads - 1) / (32 * threads));
  chunk_rows = std::max<int64_t>(4, (chunk_rows + 3) / 4 * 4);
  const int64_t chunks = (out + chunk_rows - 1) / chunk_rows;
  ParallelChunks(chunks, threads, [&](int64_t chunk) {
    const int64_t r0 = chunk * chunk_rows, r1 = std::min(out, r0 + chunk_rows);
    if (avx2) {
      gemv::RowsAvx2(p, r0, r1);
    } else {
      gemv::RowsPortable(p, r0, r1);
    }
  });

  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = out;
  y = y.view(shape);
  return x.scalar_type() == at::kFloat ? y : y.to(x.scalar_type());
}

at::Tensor Linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  const at::ScalarType dtype = x.scalar_type();
  if (at::GradMode::is_enabled()) {
    // The trainer's path: plain differentiable ops.
    if (w.scalar_type() == dtype && (!b.defined() || b.scalar_type() == dtype)) return at::linear(x, w, b);
    return at::linear(x, w.to(dtype), b.defined() ? b.to(dtype) : b);
  }
  at::Tensor y = FastLinear(x, w, b);
  if (y.defined()) return y;
  const bool same = w.scalar_type() == dtype && (!b.defined() || b.scalar_type() == dtype);
  if (same && (dtype != at::kBFloat16 || CpuHasNativeBf16Matmul())) return at::linear(x, w, b);
  // Weights stored narrower than x (bf16 weights, fp32 compute), or bf16
  // without native bf16 matmuls: an fp32 GEMM (fp32 accumulation, as a
  // native bf16 GEMM; the result rounded once to x's dtype).
  y = at::linear(x.to(at::kFloat), w.to(at::kFloat), b.defined() ? b.to(at::kFloat) : b);
  return dtype == at::kFloat ? y : y.to(dtype);
}

}  // namespace internvl::llm
