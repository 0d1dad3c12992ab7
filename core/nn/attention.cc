#include "core/nn/attention.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "core/nn/device.h"

#if defined(INTERNVL_HAVE_AVX512BF16_ATTENTION)
#include "core/nn/attention_kernels.h"
#endif

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace internvl {
namespace {

// -1: not forced; 0 / 1: ForceFusedAttention.
std::atomic<int> g_forced{-1};

bool CpuHasAmxBf16() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool has = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    return __get_cpuid_count(7, 0, &a, &b, &c, &d) != 0 && (d & (1u << 22)) != 0;
  }();
  return has;
#else
  return false;
#endif
}

// The default where not forced: the environment, else the CPU.
bool FusedByDefault() {
  static const bool fused = [] {
    const char* env = std::getenv("INTERNVL_ATTENTION_KERNEL");
    if (env != nullptr && std::strcmp(env, "ops") == 0) return false;
    if (env != nullptr && std::strcmp(env, "fused") == 0) return true;
    return !CpuHasAmxBf16();
  }();
  return fused;
}

bool FusedChosen() {
#if defined(INTERNVL_HAVE_AVX512BF16_ATTENTION)
  if (!CpuHasAvx512Bf16()) return false;
  const int forced = g_forced.load(std::memory_order_relaxed);
  return forced >= 0 ? forced == 1 : FusedByDefault();
#else
  return false;
#endif
}

bool Operand(const at::Tensor& t) {
  return t.defined() && t.dim() == 4 && t.scalar_type() == at::kBFloat16 && UseCpuKernels(t.device()) &&
         t.stride(3) == 1 && t.stride(0) % 2 == 0 && t.stride(1) % 2 == 0 && t.stride(2) % 2 == 0;
}

}  // namespace

const char* AttentionKernelName() { return !GenericKernels() && FusedChosen() ? "fused-avx512bf16" : "ops"; }

void ForceFusedAttention(int mode) { g_forced.store(mode < 0 ? -1 : (mode > 0 ? 1 : 0)); }

bool FusedAttentionRuns(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
#if defined(INTERNVL_HAVE_AVX512BF16_ATTENTION)
  if (!Operand(q) || !Operand(k) || !Operand(v) || at::GradMode::is_enabled() || !FusedChosen()) return false;
  const int64_t dim = q.size(3);
  return attention::HeadDimSupported(dim) && k.size(3) == dim && v.size(3) == dim && k.size(0) == q.size(0) &&
         v.size(0) == q.size(0) && k.size(1) == q.size(1) && v.size(1) == q.size(1) && v.size(2) == k.size(2) &&
         k.size(2) > 0 && q.size(2) > 0;
#else
  return false;
#endif
}

at::Tensor FusedAttentionBf16(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  TORCH_CHECK(FusedAttentionRuns(q, k, v), "FusedAttentionBf16: operands the fused kernel does not take");
  const int64_t B = q.size(0), H = q.size(1), N = q.size(2), L = k.size(2), D = q.size(3);
  at::Tensor out = at::empty({B, N, H, D}, q.options());
#if defined(INTERNVL_HAVE_AVX512BF16_ATTENTION)
  const auto* qp = reinterpret_cast<const uint16_t*>(q.data_ptr());
  const auto* kp = reinterpret_cast<const uint16_t*>(k.data_ptr());
  const auto* vp = reinterpret_cast<const uint16_t*>(v.data_ptr());
  auto* op = reinterpret_cast<uint16_t*>(out.data_ptr());
  const int64_t scratch_bytes = attention::HeadScratchBytes(L, D);
  at::parallel_for(0, B * H, 1, [&](int64_t p0, int64_t p1) {
    // One scratch per thread, kept between calls (InternViT: ~370 KB at 1025
    // keys, reused by every layer instead of mapped afresh).
    thread_local std::unique_ptr<char[]> buffer;
    thread_local int64_t capacity = 0;
    if (capacity < scratch_bytes) {
      buffer.reset(new char[scratch_bytes + 64]);
      capacity = scratch_bytes;
    }
    void* scratch = reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(buffer.get()) + 63) & ~uintptr_t{63});
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t b = p / H, h = p % H;
      attention::Head head;
      head.q = qp + b * q.stride(0) + h * q.stride(1);
      head.q_stride = q.stride(2);
      head.k = kp + b * k.stride(0) + h * k.stride(1);
      head.k_stride = k.stride(2);
      head.v = vp + b * v.stride(0) + h * v.stride(1);
      head.v_stride = v.stride(2);
      head.out = op + (b * N * H + h) * D;
      head.out_stride = H * D;
      head.rows = N;
      head.keys = L;
      head.dim = D;
      attention::HeadBf16Avx512(head, scratch);
    }
  });
#endif
  return out.view({B, N, H * D});
}

}  // namespace internvl
