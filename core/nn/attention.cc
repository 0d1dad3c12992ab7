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

namespace internvl {
namespace {

// -1: not forced; 0 / 1: ForceFusedAttention.
std::atomic<int> g_forced{-1};

#if defined(INTERNVL_HAVE_AVX512BF16_ATTENTION)
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

// A bf16 CPU tensor of `dims` dims, unit stride in the last, even strides
// otherwise (the kernel reads pairs of values as 32-bit words).
bool Operand(const at::Tensor& t, int64_t dims) {
  if (!t.defined() || t.dim() != dims || t.scalar_type() != at::kBFloat16 || !UseCpuKernels(t.device()) ||
      t.stride(dims - 1) != 1)
    return false;
  for (int64_t i = 0; i + 1 < dims; ++i)
    if (t.stride(i) % 2 != 0) return false;
  return true;
}

// Whether 16 rows `stride` elements apart are within reach of the keys'
// gather (32-bit element offsets).
bool GatherReaches(int64_t stride) { return stride < (int64_t{1} << 26); }
#endif

bool FusedChosen() {
#if defined(INTERNVL_HAVE_AVX512BF16_ATTENTION)
  if (!CpuHasAvx512Bf16()) return false;
  const int forced = g_forced.load(std::memory_order_relaxed);
  return forced >= 0 ? forced == 1 : FusedByDefault();
#else
  return false;
#endif
}

#if defined(INTERNVL_HAVE_AVX512BF16_ATTENTION)
// Scratch a thread keeps between calls: InternViT's ~370 KB at 1025 keys,
// reused by every layer instead of mapped afresh. Larger ones (a prefill
// chunk over a long context: ~80 MB at 128k keys of dim 128) are made for
// the call and released after it.
constexpr int64_t kKeptScratchBytes = int64_t{16} << 20;

// A thread's scratch of at least `bytes`, 64-byte aligned.
class Scratch {
 public:
  explicit Scratch(int64_t bytes) {
    thread_local std::unique_ptr<char[]> kept;
    thread_local int64_t kept_bytes = 0;
    char* base;
    if (bytes <= kKeptScratchBytes) {
      if (kept_bytes < bytes) {
        kept.reset(new char[bytes + 64]);
        kept_bytes = bytes;
      }
      base = kept.get();
    } else {
      owned_.reset(new char[bytes + 64]);
      base = owned_.get();
    }
    data_ = reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(base) + 63) & ~uintptr_t{63});
  }
  void* data() const { return data_; }

 private:
  std::unique_ptr<char[]> owned_;
  void* data_ = nullptr;
};
#endif

}  // namespace

const char* AttentionKernelName() { return !GenericKernels() && FusedChosen() ? "fused-avx512bf16" : "ops"; }

void ForceFusedAttention(int mode) { g_forced.store(mode < 0 ? -1 : (mode > 0 ? 1 : 0)); }

bool FusedAttentionRuns(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
#if defined(INTERNVL_HAVE_AVX512BF16_ATTENTION)
  if (!Operand(q, 4) || !Operand(k, 4) || !Operand(v, 4) || at::GradMode::is_enabled() || !FusedChosen()) return false;
  const int64_t dim = q.size(3);
  return attention::HeadDimSupported(dim) && GatherReaches(k.stride(2)) && k.size(3) == dim && v.size(3) == dim &&
         k.size(0) == q.size(0) && v.size(0) == q.size(0) && k.size(1) == q.size(1) && v.size(1) == q.size(1) &&
         v.size(2) == k.size(2) && k.size(2) > 0 && q.size(2) > 0;
#else
  return false;
#endif
}

at::Tensor FusedAttentionBf16(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  TORCH_CHECK(FusedAttentionRuns(q, k, v), "FusedAttentionBf16: operands the fused kernel does not take");
  const int64_t B = q.size(0), H = q.size(1), N = q.size(2), D = q.size(3);
  at::Tensor out = at::empty({B, N, H, D}, q.options());
#if defined(INTERNVL_HAVE_AVX512BF16_ATTENTION)
  const int64_t L = k.size(2);
  const auto* qp = reinterpret_cast<const uint16_t*>(q.data_ptr());
  const auto* kp = reinterpret_cast<const uint16_t*>(k.data_ptr());
  const auto* vp = reinterpret_cast<const uint16_t*>(v.data_ptr());
  auto* op = reinterpret_cast<uint16_t*>(out.data_ptr());
  const int64_t scratch_bytes = attention::HeadScratchBytes(L, D);
  at::parallel_for(0, B * H, 1, [&](int64_t p0, int64_t p1) {
    const Scratch scratch(scratch_bytes);
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
      attention::HeadBf16Avx512(head, scratch.data());
    }
  });
#endif
  return out.view({B, N, H * D});
}

bool FusedCausalAttentionRuns(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out) {
#if defined(INTERNVL_HAVE_AVX512BF16_ATTENTION)
  if (!Operand(q, 3) || !Operand(k, 3) || !Operand(v, 3) || !Operand(out, 2) || at::GradMode::is_enabled() ||
      !FusedChosen())
    return false;
  const int64_t n = q.size(0), heads = q.size(1), dim = q.size(2), kv_heads = k.size(0);
  return attention::HeadDimSupported(dim) && GatherReaches(k.stride(1)) && n > 0 && kv_heads > 0 &&
         heads % kv_heads == 0 && k.size(2) == dim && v.sizes() == k.sizes() && k.size(1) > 0 && out.size(0) == n &&
         out.size(1) == heads * dim;
#else
  return false;
#endif
}

void FusedCausalAttentionBf16(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t start,
                              float score_divisor, const at::Tensor& out) {
  TORCH_CHECK(FusedCausalAttentionRuns(q, k, v, out),
              "FusedCausalAttentionBf16: operands the fused kernel does not take");
  const int64_t n = q.size(0);
  TORCH_CHECK(start >= 0 && start + n <= k.size(1), "FusedCausalAttentionBf16: queries at [", start, ", ", start + n,
              ") past the ", k.size(1), " keys");
#if defined(INTERNVL_HAVE_AVX512BF16_ATTENTION)
  const int64_t H = q.size(1), D = q.size(2), KV = k.size(0);
  const int64_t groups = H / KV, keys = start + n;
  const auto* qp = reinterpret_cast<const uint16_t*>(q.data_ptr());
  const auto* kp = reinterpret_cast<const uint16_t*>(k.data_ptr());
  const auto* vp = reinterpret_cast<const uint16_t*>(v.data_ptr());
  auto* op = reinterpret_cast<uint16_t*>(out.data_ptr());
  const int64_t scratch_bytes = attention::HeadScratchBytes(keys, D);
  at::parallel_for(0, H, 1, [&](int64_t h0, int64_t h1) {
    const Scratch scratch(scratch_bytes);
    for (int64_t h = h0; h < h1; ++h) {
      const int64_t j = h / groups;
      attention::Head head;
      head.q = qp + h * q.stride(1);
      head.q_stride = q.stride(0);
      head.k = kp + j * k.stride(0);
      head.k_stride = k.stride(1);
      head.v = vp + j * v.stride(0);
      head.v_stride = v.stride(1);
      head.out = op + h * D;
      head.out_stride = out.stride(0);
      head.rows = n;
      head.keys = keys;
      head.dim = D;
      head.causal_start = start;
      head.score_divisor = score_divisor;
      attention::HeadBf16Avx512(head, scratch.data(), /*pack=*/h == h0 || j != (h - 1) / groups);
    }
  });
#else
  (void)start;
  (void)score_divisor;
#endif
}

}  // namespace internvl
