#include "core/llm/gemv.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/StorageImpl.h>
#include <c10/util/accumulate.h>
#include <malloc.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "core/llm/chunk_pool.h"
#include "core/llm/gemv_kernels.h"
#include "core/nn/device.h"
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
      s = AddBias(p, r, s);
      StoreY(p, m * p.out + r, s);
    }
  }
}

// The portable dot products sum in double: one fp32 chain over the whole
// row (the vector kernels keep 8-16 partial sums) put scores of ~150 (a
// peaked softmax) ~1e-5 off, which the exponential turned into 3.5e-5 of
// the output (gemv_test's bound 1e-5).
void SegmentScoresPortable(const float* q, const float* k, int64_t len, int64_t dim, float scale, float* scores) {
  for (int64_t l = 0; l < len; ++l) {
    double s = 0;
    for (int64_t d = 0; d < dim; ++d) s += static_cast<double>(q[d]) * k[l * dim + d];
    scores[l] = static_cast<float>(s) / scale;
  }
}

Segment SegmentSoftmaxPortable(float* scores, int64_t len) {
  Segment seg;
  seg.max = -std::numeric_limits<float>::infinity();
  for (int64_t l = 0; l < len; ++l) seg.max = std::max(seg.max, scores[l]);
  for (int64_t l = 0; l < len; ++l) {
    scores[l] = std::exp(scores[l] - seg.max);
    seg.sum += scores[l];
  }
  return seg;
}

void SegmentValuesPortable(const float* probs, const float* v, int64_t len, int64_t dim, float* out) {
  for (int64_t d = 0; d < dim; ++d) out[d] = 0;
  for (int64_t l = 0; l < len; ++l) {
    for (int64_t d = 0; d < dim; ++d) out[d] += probs[l] * v[l * dim + d];
  }
}

namespace {
inline float Bf16Bits(uint16_t v) {
  const uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}
inline float Widen(float v) { return v; }
inline float Widen(uint16_t v) { return Bf16Bits(v); }
// SegmentValuesGroup*'s definition, one value at a time.
template <typename T>
void ValuesGroupPortable(const float* probs, int64_t probs_stride, int64_t heads, const T* const* blocks, int64_t bs,
                         int64_t len, int64_t dim, float* out, int64_t out_stride) {
  for (int64_t h = 0; h < heads; ++h) {
    float* o = out + h * out_stride;
    std::fill(o, o + dim, 0.0f);
    for (int64_t l = 0; l < len; ++l) {
      const float p = probs[h * probs_stride + l];
      const T* row = blocks[l / bs] + (l % bs) * dim;
      for (int64_t d = 0; d < dim; ++d) o[d] += p * Widen(row[d]);
    }
  }
}
}  // namespace

void SegmentScoresBf16Portable(const float* q, const uint16_t* k, int64_t len, int64_t dim, float scale,
                               float* scores) {
  for (int64_t l = 0; l < len; ++l) {
    double s = 0;
    for (int64_t d = 0; d < dim; ++d) s += static_cast<double>(q[d]) * Bf16Bits(k[l * dim + d]);
    scores[l] = static_cast<float>(s) / scale;
  }
}

void SegmentValuesBf16Portable(const float* probs, const uint16_t* v, int64_t len, int64_t dim, float* out) {
  for (int64_t d = 0; d < dim; ++d) out[d] = 0;
  for (int64_t l = 0; l < len; ++l) {
    for (int64_t d = 0; d < dim; ++d) out[d] += probs[l] * Bf16Bits(v[l * dim + d]);
  }
}

namespace {

// The squares of x summed as RmsNormRow* documents (8 interleaved double
// sums, combined pairwise): what the AVX2 version's two 4-lane accumulators
// give.
template <typename T>
float MeanOfSquares(const T* x, int64_t n) {
  double s[8] = {};
  for (int64_t i = 0; i < n; ++i) {
    const double v = Widen(x[i]);
    s[i % 8] += v * v;
  }
  const double t0 = s[0] + s[4], t1 = s[1] + s[5], t2 = s[2] + s[6], t3 = s[3] + s[7];
  return static_cast<float>(((t0 + t1) + (t2 + t3)) / static_cast<double>(n));
}

inline float RoundedBf16(float v) { return Bf16Bits(FloatToBf16Bits(v)); }

}  // namespace

void RmsNormRowPortable(const float* x, const float* w, int64_t n, float eps, float* out) {
  const float inv = 1.0f / std::sqrt(MeanOfSquares(x, n) + eps);
  for (int64_t i = 0; i < n; ++i) out[i] = w[i] * (x[i] * inv);
}

void RmsNormRowBf16Portable(const uint16_t* x, const uint16_t* w, int64_t n, float eps, uint16_t* out) {
  const float inv = 1.0f / std::sqrt(MeanOfSquares(x, n) + eps);
  for (int64_t i = 0; i < n; ++i) out[i] = FloatToBf16Bits(Bf16Bits(w[i]) * RoundedBf16(Bf16Bits(x[i]) * inv));
}

void AddRowPortable(const float* a, const float* b, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

void AddRowBf16Portable(const uint16_t* a, const uint16_t* b, int64_t n, uint16_t* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = FloatToBf16Bits(Bf16Bits(a[i]) + Bf16Bits(b[i]));
}

void RopeRowsPortable(const float* x, int64_t heads, int64_t d, const float* cos, const float* sin, float* out) {
  const int64_t half = d / 2;
  for (int64_t h = 0; h < heads; ++h, x += d, out += d) {
    for (int64_t e = 0; e < d; ++e) {
      const float a = x[e] * cos[e];
      const float r = (e < half ? -x[e + half] : x[e - half]) * sin[e];
      out[e] = a + r;
    }
  }
}

void RopeRowsBf16Portable(const uint16_t* x, int64_t heads, int64_t d, const uint16_t* cos, const uint16_t* sin,
                          uint16_t* out) {
  const int64_t half = d / 2;
  for (int64_t h = 0; h < heads; ++h, x += d, out += d) {
    for (int64_t e = 0; e < d; ++e) {
      const float a = RoundedBf16(Bf16Bits(x[e]) * Bf16Bits(cos[e]));
      const float rot = e < half ? -Bf16Bits(x[e + half]) : Bf16Bits(x[e - half]);
      const float r = RoundedBf16(rot * Bf16Bits(sin[e]));
      out[e] = FloatToBf16Bits(a + r);
    }
  }
}

#ifndef INTERNVL_HAVE_AVX2_GEMV
void RmsNormRowAvx2(const float* x, const float* w, int64_t n, float eps, float* out) {
  RmsNormRowPortable(x, w, n, eps, out);
}
void RmsNormRowBf16Avx2(const uint16_t* x, const uint16_t* w, int64_t n, float eps, uint16_t* out) {
  RmsNormRowBf16Portable(x, w, n, eps, out);
}
void RopeRowsAvx2(const float* x, int64_t heads, int64_t d, const float* cos, const float* sin, float* out) {
  RopeRowsPortable(x, heads, d, cos, sin, out);
}
void AddRowAvx2(const float* a, const float* b, int64_t n, float* out) { AddRowPortable(a, b, n, out); }
void AddRowBf16Avx2(const uint16_t* a, const uint16_t* b, int64_t n, uint16_t* out) {
  AddRowBf16Portable(a, b, n, out);
}
void RopeRowsBf16Avx2(const uint16_t* x, int64_t heads, int64_t d, const uint16_t* cos, const uint16_t* sin,
                      uint16_t* out) {
  RopeRowsBf16Portable(x, heads, d, cos, sin, out);
}
#endif

#ifndef INTERNVL_HAVE_AVX2_GEMV
void SegmentScoresBf16Avx2(const float* q, const uint16_t* k, int64_t len, int64_t dim, float scale, float* scores) {
  SegmentScoresBf16Portable(q, k, len, dim, scale, scores);
}
void SegmentValuesBf16Avx2(const float* probs, const uint16_t* v, int64_t len, int64_t dim, float* out) {
  SegmentValuesBf16Portable(probs, v, len, dim, out);
}
#endif

#ifndef INTERNVL_HAVE_AVX2_GEMV
void SegmentScoresAvx2(const float* q, const float* k, int64_t len, int64_t dim, float scale, float* scores) {
  SegmentScoresPortable(q, k, len, dim, scale, scores);
}
Segment SegmentSoftmaxAvx2(float* scores, int64_t len) { return SegmentSoftmaxPortable(scores, len); }
void SegmentValuesAvx2(const float* probs, const float* v, int64_t len, int64_t dim, float* out) {
  SegmentValuesPortable(probs, v, len, dim, out);
}
void SegmentValuesGroupAvx2(const float* probs, int64_t probs_stride, int64_t heads, const float* const* blocks,
                            int64_t bs, int64_t len, int64_t dim, float* out, int64_t out_stride) {
  ValuesGroupPortable(probs, probs_stride, heads, blocks, bs, len, dim, out, out_stride);
}
void SegmentValuesGroupBf16Avx2(const float* probs, int64_t probs_stride, int64_t heads, const uint16_t* const* blocks,
                                int64_t bs, int64_t len, int64_t dim, float* out, int64_t out_stride) {
  ValuesGroupPortable(probs, probs_stride, heads, blocks, bs, len, dim, out, out_stride);
}
void SegmentScoresGroupAvx2(const float* q, int64_t heads, const float* const* blocks, int64_t bs, int64_t len,
                            int64_t dim, float scale, float* scores, int64_t stride, const float* const*) {
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t b = 0; b * bs < len; ++b)
      SegmentScoresPortable(q + h * dim, blocks[b], std::min(bs, len - b * bs), dim, scale,
                            scores + h * stride + b * bs);
}
void SegmentScoresGroupBf16Avx2(const float* q, int64_t heads, const uint16_t* const* blocks, int64_t bs, int64_t len,
                                int64_t dim, float scale, float* scores, int64_t stride, const uint16_t* const*) {
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t b = 0; b * bs < len; ++b)
      SegmentScoresBf16Portable(q + h * dim, blocks[b], std::min(bs, len - b * bs), dim, scale,
                                scores + h * stride + b * bs);
}
void PrepareAvx2(Problem& p, float* scratch) {}
void RowsAvx2(const Problem& p, int64_t row_begin, int64_t row_end) { RowsPortable(p, row_begin, row_end); }
bool CpuHasAvx2Fma() { return false; }
void Bf16ToFloatAvx2(const uint16_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = Bf16Bits(src[i]);
}
void FloatToBf16Avx2(const float* src, uint16_t* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = FloatToBf16Bits(src[i]);
}
#endif
#ifndef INTERNVL_HAVE_AVX512BF16_GEMV
void SegmentScoresBf16Avx512(const uint16_t* q, const uint16_t* k, int64_t len, int64_t dim, float scale,
                             float* scores) {
  std::vector<float> qf(static_cast<size_t>(dim));
  for (int64_t d = 0; d < dim; ++d) qf[d] = Bf16Bits(q[d]);
  SegmentScoresBf16Portable(qf.data(), k, len, dim, scale, scores);
}
void SegmentValuesBf16Avx512(const float* probs, const uint16_t* v, int64_t len, int64_t dim, float* out) {
  SegmentValuesBf16Portable(probs, v, len, dim, out);
}
Segment SegmentSoftmaxAvx512(float* scores, int64_t len) { return SegmentSoftmaxAvx2(scores, len); }
void SegmentValuesGroupBf16Avx512(const float* probs, int64_t probs_stride, int64_t heads,
                                  const uint16_t* const* blocks, int64_t bs, int64_t len, int64_t dim, float* out,
                                  int64_t out_stride) {
  for (int64_t h = 0; h < heads; ++h) {
    float* o = out + h * out_stride;
    std::fill(o, o + dim, 0.0f);
    for (int64_t l = 0; l < len; ++l) {
      uint32_t bits;
      std::memcpy(&bits, &probs[h * probs_stride + l], sizeof(bits));
      const float p = Bf16Bits(static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16));
      const uint16_t* row = blocks[l / bs] + (l % bs) * dim;
      for (int64_t d = 0; d < dim; ++d) o[d] += p * Bf16Bits(row[d]);
    }
  }
}
void RowsAvx512Bf16(const Problem& p, int64_t row_begin, int64_t row_end) { RowsPortable(p, row_begin, row_end); }
bool CpuHasAvx512Bf16() { return false; }
#else
bool CpuHasAvx512Bf16() { return internvl::CpuHasAvx512Bf16(); }
#endif
#ifdef INTERNVL_HAVE_AVX2_GEMV
bool CpuHasAvx2Fma() { return internvl::CpuHasAvx2Fma(); }
#endif

}  // namespace gemv

namespace {

std::atomic<bool> g_fast_linear{true};

bool Supported(at::ScalarType t) { return t == at::kFloat || t == at::kBFloat16; }

// -1: not forced (the best the CPU runs, or INTERNVL_GEMV_KERNEL's choice).
std::atomic<int> g_forced_kernel{-1};

GemvKernel BestKernel() {
  if (gemv::CpuHasAvx512Bf16()) return GemvKernel::kAvx512Bf16;
  if (gemv::CpuHasAvx2Fma()) return GemvKernel::kAvx2;
  return GemvKernel::kPortable;
}

GemvKernel EnvKernel() {
  static const GemvKernel k = [] {
    const char* env = std::getenv("INTERNVL_GEMV_KERNEL");
    if (env != nullptr) {
      for (GemvKernel c : {GemvKernel::kPortable, GemvKernel::kAvx2, GemvKernel::kAvx512Bf16}) {
        if (std::string(env) == GemvKernelName(c) && GemvKernelSupported(c)) return c;
      }
      if (*env != 0) std::fprintf(stderr, "INTERNVL_GEMV_KERNEL=%s is unknown or unsupported here: ignored\n", env);
    }
    return BestKernel();
  }();
  return k;
}

}  // namespace

const char* GemvKernelName(GemvKernel k) {
  switch (k) {
    case GemvKernel::kPortable:
      return "portable";
    case GemvKernel::kAvx2:
      return "avx2";
    case GemvKernel::kAvx512Bf16:
      return "avx512bf16";
  }
  return "?";
}

bool GemvKernelSupported(GemvKernel k) {
  switch (k) {
    case GemvKernel::kPortable:
      return true;
    case GemvKernel::kAvx2:
      return gemv::CpuHasAvx2Fma();
    case GemvKernel::kAvx512Bf16:
      return gemv::CpuHasAvx512Bf16() && gemv::CpuHasAvx2Fma();
  }
  return false;
}

GemvKernel ActiveGemvKernel() {
  const int forced = g_forced_kernel.load(std::memory_order_relaxed);
  return forced >= 0 ? static_cast<GemvKernel>(forced) : EnvKernel();
}

bool ForceGemvKernel(std::optional<GemvKernel> kernel) {
  if (kernel && !GemvKernelSupported(*kernel)) return false;
  g_forced_kernel.store(kernel ? static_cast<int>(*kernel) : -1);
  return true;
}

void SetFastLinearEnabled(bool enabled) { g_fast_linear.store(enabled); }
bool FastLinearEnabled() { return g_fast_linear.load() && !GenericKernels(); }
const char* FastLinearKernel() { return GemvKernelName(ActiveGemvKernel()); }

int64_t FastLinearMaxRows(at::ScalarType x, at::ScalarType w) {
  // Where libtorch's oneDNN multiplies bf16 natively, its GEMM overtakes the
  // widening avx2 kernel beyond 4 rows (measured on a 2-core AVX-512-BF16 Zen
  // 5, 9728x896 bf16: 0.57 vs 0.67 ms at 4 rows, 0.97 vs 0.83 at 8, 1.99 vs
  // 1.09 at 16). The avx512bf16 kernel runs up to 32, the engine's default
  // step of 32 sequences (bench_gemv --only=crossover, from memory: at 32
  // rows gate|up 1.47 ms against oneDNN's 2.24, down 0.79 vs 1.15, q|k|v
  // 0.17 vs 0.56); in a server, besides, oneDNN's OpenMP threads spin
  // between layers against the helper pool of the attention kernels (8
  // streams of InternVL2-1B: 50 ms per step against 115 through oneDNN).
  const GemvKernel kernel = ActiveGemvKernel();
  if (x == at::kBFloat16 && w == at::kBFloat16 && CpuHasNativeBf16Matmul() && kernel != GemvKernel::kAvx512Bf16) {
    return 4;
  }
  if (kernel == GemvKernel::kPortable) return 16;
  // fp32 weights and inputs: the avx2 kernel against libtorch's fp32 GEMM
  // (same bench, Zen 5) was 1.3-1.6x faster at 24 rows and 0.87-1.07x at 32.
  // Narrower weights than the inputs (bf16 computed in fp32) win at any of
  // these counts, since the GEMM needs them cast first (gate|up at 32 rows:
  // 3.9 ms against 72).
  if (x == at::kFloat && w == at::kFloat) return 24;
  return kMaxFastLinearRows;
}

bool FastLinearApplies(at::ScalarType x_dtype, int64_t rows, const at::Tensor& w, const at::Tensor& b) {
  if (!FastLinearEnabled() || at::GradMode::is_enabled()) return false;
  if (!w.defined() || w.dim() != 2 || !w.device().is_cpu()) return false;
  const int64_t out = w.size(0), in = w.size(1);
  if (in == 0 || out == 0 || !w.is_contiguous()) return false;
  if (!Supported(x_dtype) || !Supported(w.scalar_type())) return false;
  if (b.defined() && (b.dim() != 1 || b.size(0) != out || !Supported(b.scalar_type()) || !b.device().is_cpu())) {
    return false;
  }
  return rows >= 1 && rows <= FastLinearMaxRows(x_dtype, w.scalar_type());
}

at::Tensor FastLinear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  if (!x.defined() || x.dim() < 1 || !x.device().is_cpu() || !w.defined() || w.dim() != 2) return {};
  const int64_t out = w.size(0), in = w.size(1);
  if (in == 0 || x.size(-1) != in) return {};
  const int64_t rows = x.numel() / in;
  if (!FastLinearApplies(x.scalar_type(), rows, w, b)) return {};
  const at::Tensor xc = x.is_contiguous() ? x : x.contiguous();
  at::Tensor y = at::empty({rows, out}, x.options());
  FastLinearRows(xc.data_ptr(), x.scalar_type(), rows, w, b, y.data_ptr());
  if (x.dim() == 2) return y;
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = out;
  return y.view(shape);
}

void FastLinearRows(const void* x, at::ScalarType x_dtype, int64_t rows, const at::Tensor& w, const at::Tensor& b,
                    void* y) {
  // No libtorch op here: between two products that stream megabytes of
  // weights, each op's dispatch runs from cold caches (measured ~45 us of
  // ops around a 2 MB product whose kernel takes ~50; an at::empty alone
  // after a 64 MB pass 4-5 us, a narrow 9 us, against 0.3 and 0.6 hot).
  const int64_t out = w.size(0), in = w.size(1);
  gemv::Problem p;
  p.m = rows;
  p.in = in;
  p.out = out;
  p.w = w.data_ptr();
  p.w_bf16 = w.scalar_type() == at::kBFloat16;
  at::Tensor bc;
  if (b.defined()) {
    bc = b.is_contiguous() ? b : b.contiguous();
    if (bc.scalar_type() == at::kBFloat16) {
      p.bias_bf16 = reinterpret_cast<const uint16_t*>(bc.data_ptr());
    } else {
      p.bias = bc.data_ptr<float>();
    }
  }
  if (x_dtype == at::kBFloat16) {
    p.y_bf16 = static_cast<uint16_t*>(y);
  } else {
    p.y = static_cast<float*>(y);
  }
  GemvKernel kernel = ActiveGemvKernel();
  // Only for bf16 inputs and weights (the products stay exact).
  if (kernel == GemvKernel::kAvx512Bf16 && !(x_dtype == at::kBFloat16 && p.w_bf16)) kernel = GemvKernel::kAvx2;
  // The inputs widened to fp32 and the AVX2 kernel's layout of them: buffers
  // reused per thread (bound to references: the helpers read the caller's).
  thread_local std::vector<float> t_x, t_perm;
  std::vector<float>& xf = t_x;
  std::vector<float>& perm = t_perm;
  if (kernel == GemvKernel::kAvx512Bf16) {
    p.x_bf16 = static_cast<const uint16_t*>(x);
  } else {
    p.x = FloatValues(x, x_dtype, rows * in, xf, kernel != GemvKernel::kPortable);
  }
  if (kernel == GemvKernel::kAvx2) {
    perm.resize(static_cast<size_t>(rows * in));
    gemv::PrepareAvx2(p, perm.data());
  }
  const int threads = at::get_num_threads();
  const RowChunks& chunks = SplitRowsCached(out, in, threads);
  ParallelChunks(chunks.count(), threads, [&](int64_t chunk) {
    const int64_t r0 = chunks.begin[chunk], r1 = chunks.begin[chunk + 1];
    switch (kernel) {
      case GemvKernel::kAvx512Bf16:
        return gemv::RowsAvx512Bf16(p, r0, r1);
      case GemvKernel::kAvx2:
        return gemv::RowsAvx2(p, r0, r1);
      case GemvKernel::kPortable:
        return gemv::RowsPortable(p, r0, r1);
    }
  });
}

at::Tensor CastFloatBf16(const at::Tensor& t, at::ScalarType dtype) {
  const at::ScalarType from = t.scalar_type();
  if (from == dtype) return t;
  const bool to_bf16 = from == at::kFloat && dtype == at::kBFloat16;
  const bool to_float = from == at::kBFloat16 && dtype == at::kFloat;
  if ((!to_bf16 && !to_float) || !t.device().is_cpu() || !t.is_contiguous() || at::GradMode::is_enabled()) {
    return t.to(dtype);
  }
  at::Tensor out = at::empty(t.sizes(), t.options().dtype(dtype));
  const int64_t n = t.numel();
  constexpr int64_t kChunk = int64_t{1} << 15;
  const void* src = t.data_ptr();
  void* dst = out.data_ptr();
  // (Vectors where the kernels may use AVX2: the decode step's logits, 151,655
  // per row, took ~0.1 ms one value at a time.)
  const bool avx2 = ActiveGemvKernel() != GemvKernel::kPortable;
  ParallelChunks((n + kChunk - 1) / kChunk, at::get_num_threads(), [&](int64_t c) {
    const int64_t i0 = c * kChunk, i1 = std::min(n, i0 + kChunk);
    if (avx2) {
      to_float ? gemv::Bf16ToFloatAvx2(static_cast<const uint16_t*>(src) + i0, static_cast<float*>(dst) + i0, i1 - i0)
               : gemv::FloatToBf16Avx2(static_cast<const float*>(src) + i0, static_cast<uint16_t*>(dst) + i0, i1 - i0);
    } else if (to_float) {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      uint32_t* d = static_cast<uint32_t*>(dst);
      for (int64_t i = i0; i < i1; ++i) d[i] = static_cast<uint32_t>(s[i]) << 16;
    } else {
      const float* s = static_cast<const float*>(src);
      uint16_t* d = static_cast<uint16_t*>(dst);
      for (int64_t i = i0; i < i1; ++i) d[i] = FloatToBf16Bits(s[i]);
    }
  });
  return out;
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
  if (same && (dtype != at::kBFloat16 || !x.device().is_cpu() || CpuHasNativeBf16Matmul())) {
    return at::linear(x, w, b);
  }
  // Weights stored narrower than x (bf16 weights, fp32 compute), or bf16
  // without native bf16 matmuls: an fp32 GEMM (fp32 accumulation, as a
  // native bf16 GEMM; the result rounded once to x's dtype).
  y = at::linear(x.to(at::kFloat), w.to(at::kFloat), b.defined() ? b.to(at::kFloat) : b);
  return dtype == at::kFloat ? y : y.to(dtype);
}

const float* FloatValues(const at::Tensor& t, std::vector<float>& buffer, bool avx2) {
  if (Supported(t.scalar_type())) return FloatValues(t.data_ptr(), t.scalar_type(), t.numel(), buffer, avx2);
  const at::Tensor f = t.to(at::kFloat);
  buffer.resize(static_cast<size_t>(t.numel()));
  std::memcpy(buffer.data(), f.data_ptr<float>(), buffer.size() * sizeof(float));
  return buffer.data();
}

const float* FloatValues(const void* data, at::ScalarType dtype, int64_t n, std::vector<float>& buffer, bool avx2) {
  if (dtype == at::kFloat) return static_cast<const float*>(data);
  TORCH_CHECK(dtype == at::kBFloat16, "FloatValues: fp32 or bf16 values only");
  buffer.resize(static_cast<size_t>(n));
  const auto* src = static_cast<const uint16_t*>(data);
  if (avx2) {
    gemv::Bf16ToFloatAvx2(src, buffer.data(), n);
  } else {
    for (int64_t i = 0; i < n; ++i) buffer[i] = Bf16BitsToFloat(src[i]);
  }
  return buffer.data();
}

bool PagedDecodeAttentionApplies(at::ScalarType q_dtype, int64_t seqs, int64_t heads, int64_t dim,
                                 const at::Tensor& key_pool, const at::Tensor& value_pool,
                                 const std::vector<const std::vector<int32_t>*>& tables,
                                 const std::vector<int64_t>& lens) {
  if (!FastLinearEnabled() || at::GradMode::is_enabled()) return false;
  if (!key_pool.defined() || !value_pool.defined() || key_pool.dim() != 4 || value_pool.sizes() != key_pool.sizes()) {
    return false;
  }
  if (!Supported(q_dtype)) return false;
  for (const at::Tensor* t : {&key_pool, &value_pool}) {
    if (!Supported(t->scalar_type()) || !t->device().is_cpu()) return false;
  }
  if (value_pool.scalar_type() != key_pool.scalar_type()) return false;
  // Each block of each KV head a contiguous run of rows; blocks and heads
  // at any strides (the pool lays each head's blocks out one after another:
  // paged_kv.h), the same for keys and values.
  if (key_pool.strides() != value_pool.strides() || key_pool.stride(3) != 1 || key_pool.stride(2) != key_pool.size(3)) {
    return false;
  }
  const int64_t kv_heads = key_pool.size(1), bs = key_pool.size(2);
  if (key_pool.size(3) != dim || dim < 1 || kv_heads == 0 || heads % kv_heads != 0 ||
      static_cast<int64_t>(tables.size()) != seqs || static_cast<int64_t>(lens.size()) != seqs) {
    return false;
  }
  for (int64_t s = 0; s < seqs; ++s) {
    if (lens[s] < 1 || static_cast<int64_t>(tables[s]->size()) * bs < lens[s]) return false;
  }
  return true;
}

at::Tensor PagedDecodeAttention(const at::Tensor& q, const at::Tensor& key_pool, const at::Tensor& value_pool,
                                const std::vector<const std::vector<int32_t>*>& tables,
                                const std::vector<int64_t>& lens) {
  if (!q.defined() || q.dim() != 3 || !q.device().is_cpu() ||
      !PagedDecodeAttentionApplies(q.scalar_type(), q.size(0), q.size(1), q.size(2), key_pool, value_pool, tables,
                                   lens)) {
    return {};
  }
  const at::Tensor qcont = q.contiguous();
  at::Tensor out = at::empty({q.size(0), q.size(1) * q.size(2)}, q.options());
  PagedDecodeAttentionRows(qcont.data_ptr(), q.scalar_type(), q.size(0), q.size(1), q.size(2), key_pool, value_pool,
                           tables, lens, out.data_ptr());
  return out;
}

void PagedDecodeAttentionRows(const void* q, at::ScalarType q_dtype, int64_t seqs, int64_t heads, int64_t dim,
                              const at::Tensor& key_pool, const at::Tensor& value_pool,
                              const std::vector<const std::vector<int32_t>*>& tables, const std::vector<int64_t>& lens,
                              void* out) {
  const bool bf16 = key_pool.scalar_type() == at::kBFloat16;
  const int64_t block_stride = key_pool.stride(0), head_stride = key_pool.stride(1);
  const int64_t kv_heads = key_pool.size(1), bs = key_pool.size(2), num_blocks = key_pool.size(0);
  const int64_t groups = heads / kv_heads;
  const bool avx2 = ActiveGemvKernel() != GemvKernel::kPortable && dim % 8 == 0;
  // The queries in fp32 and the result before its cast: per-thread buffers
  // (a tensor each cost ~1-2 us per layer between two products).
  thread_local std::vector<float> t_q, t_out;
  const float* qp = FloatValues(q, q_dtype, seqs * heads * dim, t_q, ActiveGemvKernel() != GemvKernel::kPortable);
  // bf16 queries over a bf16 cache (a model computed in bf16): AVX-512-BF16
  // dot products, 4-5x fewer instructions than widening every key and value
  // for each of the group's query heads.
  const bool native_bf16 =
      bf16 && q_dtype == at::kBFloat16 && ActiveGemvKernel() == GemvKernel::kAvx512Bf16 && dim % 32 == 0;
  const uint16_t* qbp = native_bf16 ? static_cast<const uint16_t*>(q) : nullptr;
  const float scale = static_cast<float>(std::sqrt(static_cast<double>(dim)));
  // Split softmax ("flash decoding"): one chunk per (sequence, kv head,
  // segment of keys) runs the group's query heads over its segment: all their
  // scores (the segment's 32 KB of keys stay in L1/L2), softmax pieces, then
  // all their weighted values (the values likewise). The cache is read from
  // memory once, and long contexts give every thread work. Segments are then
  // combined with their maxima. No libtorch op in between: a parallel one
  // wakes libtorch's OpenMP threads, whose spinning then competes with these
  // for the cores. Segments are whole blocks of 32 KB of fp32 keys (128 keys
  // at d = 64) up to 4x that, the longest that still leaves each thread 4
  // chunks: fewer chunks start cold and fewer pieces are combined. At 2500
  // keys on 2 threads (512-key segments): 2.9-3.1 ms per token for 24 layers
  // of bf16 cache against 3.3-3.5 for 128-key segments, fp32 5.1 against 5.5
  // (bench_gemv, A/B interleaved); 384-1280 keys all measured alike, one
  // segment per head 15-20% slower. (AVX-512-BF16's grouped values take at
  // most 512 keys: 512-key segments there measured 2.9-3.5 ms against
  // 3.0-3.5 for 256, alternated on a 2-core Zen 4.)
  const int threads = at::get_num_threads();
  int64_t keys_per_head = 0;
  for (int64_t len : lens) keys_per_head += len;
  const int64_t min_keys = std::max<int64_t>(16, (int64_t{32} << 10) / (4 * dim));
  const int64_t max_keys =
      native_bf16 ? std::min<int64_t>(gemv::kMaxValuesGroupKeysBf16Avx512, 4 * min_keys) : 4 * min_keys;
  const int64_t keys = std::clamp<int64_t>(keys_per_head * kv_heads / (4 * std::max(1, threads)), min_keys,
                                           std::max(min_keys, max_keys));
  constexpr int64_t kMaxSegBlocks = 256;
  const int64_t seg_blocks = std::clamp<int64_t>(keys / bs, 1, kMaxSegBlocks);
  const int64_t segment = seg_blocks * bs;
  // (AVX-512-BF16: pairs of keys in one block, at most 512 keys; AVX2: fp32
  // or widened bf16 values, any block size.)
  const bool grouped_values =
      seg_blocks <= kMaxSegBlocks &&
      ((native_bf16 && bs % 2 == 0 && segment <= gemv::kMaxValuesGroupKeysBf16Avx512) || (!native_bf16 && avx2));
  struct Chunk {
    int64_t s, j, seg;
    int64_t keys;  // min(segment, the sequence's keys from the segment on)
  };
  // The buffers are reused from call to call (a call per layer per step): a
  // fresh 140 KB scratch per call went to malloc and back, and each free of
  // it (over 64 KB) made glibc consolidate its fast bins (malloc_consolidate
  // in decode profiles). thread_local, so that concurrent callers each have
  // theirs; bound to references because the helper threads running the
  // chunks must use the caller's (a lambda names the running thread's).
  // What a large batch grew beyond kKeepBytes is given back at the end: the
  // scratch is batch x KV heads x context x query heads per KV head floats,
  // 0.5 GB for 64 sequences of 32K tokens on 8 KV heads, which a thread
  // would otherwise hold for good.
  thread_local std::vector<int64_t> t_segs, t_seg_first;
  thread_local std::vector<Chunk> t_chunks;
  thread_local std::vector<gemv::Segment> t_parts;
  thread_local std::vector<float> t_partial, t_scratch;
  std::vector<int64_t>& segs = t_segs;
  std::vector<int64_t>& seg_first = t_seg_first;
  std::vector<Chunk>& chunks = t_chunks;
  std::vector<gemv::Segment>& parts = t_parts;
  std::vector<float>& partial = t_partial;
  std::vector<float>& scratch = t_scratch;
  segs.assign(seqs, 0);
  seg_first.assign(seqs + 1, 0);
  chunks.clear();
  for (int64_t s = 0; s < seqs; ++s) {
    segs[s] = (lens[s] + segment - 1) / segment;
    seg_first[s + 1] = seg_first[s] + segs[s];
    for (int64_t j = 0; j < kv_heads; ++j)
      for (int64_t g = 0; g < segs[s]; ++g) chunks.push_back({s, j, g, std::min(segment, lens[s] - g * segment)});
  }
  // Per (sequence, head, segment): softmax pieces and unnormalised outputs.
  auto part_index = [&](int64_t s, int64_t h, int64_t g) { return seg_first[s] * heads + h * segs[s] + g; };
  parts.resize(static_cast<size_t>(seg_first[seqs] * heads));
  partial.resize(static_cast<size_t>(seg_first[seqs] * heads * dim));
  scratch.resize(chunks.size() * groups * segment + chunks.size() * dim);
  // fp32 or bf16 (uint16_t bits) rows.
  const void* kp = key_pool.data_ptr();
  const void* vp = value_pool.data_ptr();
  auto run_chunk = [&](int64_t c) {
    const Chunk& ch = chunks[c];
    const std::vector<int32_t>& table = *tables[ch.s];
    const int64_t l0 = ch.seg * segment, n = ch.keys;
    float* sc = scratch.data() + c * groups * segment;
    float* tmp = scratch.data() + chunks.size() * groups * segment + c * dim;
    auto block_offset = [&](int64_t b) {
      const int64_t blk = table[l0 / bs + b];
      return std::clamp<int64_t>(blk, 0, num_blocks - 1) * block_stride + ch.j * head_stride;
    };
    auto scores = [&](const float* qh, int64_t b, int64_t nk, float* dst) {
      if (native_bf16) {
        const int64_t h = (qh - qp) / dim;  // row of q: sequence * heads + head
        gemv::SegmentScoresBf16Avx512(qbp + h * dim, static_cast<const uint16_t*>(kp) + block_offset(b), nk, dim, scale,
                                      dst);
      } else if (bf16) {
        const uint16_t* k = static_cast<const uint16_t*>(kp) + block_offset(b);
        avx2 ? gemv::SegmentScoresBf16Avx2(qh, k, nk, dim, scale, dst)
             : gemv::SegmentScoresBf16Portable(qh, k, nk, dim, scale, dst);
      } else {
        const float* k = static_cast<const float*>(kp) + block_offset(b);
        avx2 ? gemv::SegmentScoresAvx2(qh, k, nk, dim, scale, dst)
             : gemv::SegmentScoresPortable(qh, k, nk, dim, scale, dst);
      }
    };
    auto values = [&](const float* probs, int64_t b, int64_t nk, float* dst) {
      if (native_bf16) {
        gemv::SegmentValuesBf16Avx512(probs, static_cast<const uint16_t*>(vp) + block_offset(b), nk, dim, dst);
      } else if (bf16) {
        const uint16_t* v = static_cast<const uint16_t*>(vp) + block_offset(b);
        avx2 ? gemv::SegmentValuesBf16Avx2(probs, v, nk, dim, dst)
             : gemv::SegmentValuesBf16Portable(probs, v, nk, dim, dst);
      } else {
        const float* v = static_cast<const float*>(vp) + block_offset(b);
        avx2 ? gemv::SegmentValuesAvx2(probs, v, nk, dim, dst) : gemv::SegmentValuesPortable(probs, v, nk, dim, dst);
      }
    };
    const int64_t h0 = ch.j * groups;
    // The segment's key and value blocks in the pool (the grouped kernels
    // take them as tables; filled once for the scores and the values).
    const uint16_t *keys16[kMaxSegBlocks], *values16[kMaxSegBlocks];
    const float *keys32[kMaxSegBlocks], *values32[kMaxSegBlocks];
    auto block_table = [&](const auto* pool, auto** table) {
      for (int64_t b = 0; b * bs < n; ++b) table[b] = pool + block_offset(b);
    };
    if (grouped_values) {
      if (bf16) {
        block_table(static_cast<const uint16_t*>(kp), keys16);
        block_table(static_cast<const uint16_t*>(vp), values16);
      } else {
        block_table(static_cast<const float*>(kp), keys32);
        block_table(static_cast<const float*>(vp), values32);
      }
    }
    if (grouped_values && native_bf16) {
      // Block by block for the whole group (the block's keys in L1 for all
      // its heads), keys and values prefetched meanwhile.
      gemv::SegmentScoresGroupBf16Avx512(qbp + (ch.s * heads + h0) * dim, groups, keys16, bs, n, dim, scale, sc,
                                         segment, values16);
    } else if (grouped_values) {
      // The group's scores together: each key row widened once (GQA); the
      // value blocks are prefetched meanwhile.
      const float* qg = qp + (ch.s * heads + h0) * dim;
      bf16 ? gemv::SegmentScoresGroupBf16Avx2(qg, groups, keys16, bs, n, dim, scale, sc, segment, values16)
           : gemv::SegmentScoresGroupAvx2(qg, groups, keys32, bs, n, dim, scale, sc, segment, values32);
    } else {
      for (int64_t g = 0; g < groups; ++g) {
        const float* qh = qp + (ch.s * heads + h0 + g) * dim;
        for (int64_t b = 0; b * bs < n; ++b) {
          const int64_t nk = std::min(bs, n - b * bs);
          scores(qh, b, nk, sc + g * segment + b * bs);
        }
      }
    }
    for (int64_t g = 0; g < groups; ++g) {
      float* p = sc + g * segment;
      parts[part_index(ch.s, h0 + g, ch.seg)] = native_bf16 ? gemv::SegmentSoftmaxAvx512(p, n)
                                                : avx2      ? gemv::SegmentSoftmaxAvx2(p, n)
                                                            : gemv::SegmentSoftmaxPortable(p, n);
    }
    if (grouped_values) {
      // The whole group over the whole segment: each value row read once.
      float* o = partial.data() + part_index(ch.s, h0, ch.seg) * dim;
      const int64_t o_stride = segs[ch.s] * dim;
      if (!bf16) {
        gemv::SegmentValuesGroupAvx2(sc, segment, groups, values32, bs, n, dim, o, o_stride);
      } else if (native_bf16) {
        gemv::SegmentValuesGroupBf16Avx512(sc, segment, groups, values16, bs, n, dim, o, o_stride);
      } else {
        gemv::SegmentValuesGroupBf16Avx2(sc, segment, groups, values16, bs, n, dim, o, o_stride);
      }
      return;
    }
    for (int64_t g = 0; g < groups; ++g) {
      float* o = partial.data() + part_index(ch.s, h0 + g, ch.seg) * dim;
      for (int64_t b = 0; b * bs < n; ++b) {
        const int64_t nk = std::min(bs, n - b * bs);
        values(sc + g * segment + b * bs, b, nk, b == 0 ? o : tmp);
        if (b > 0)
          for (int64_t d = 0; d < dim; ++d) o[d] += tmp[d];
      }
    }
  };
  const int64_t nchunks = static_cast<int64_t>(chunks.size());
  if (nchunks <= threads) {
    ParallelChunks(nchunks, threads, run_chunk);
  } else {
    // One run of consecutive chunks per thread, of about equal key counts:
    // each thread then streams through its heads' keys and values in memory
    // order, where chunks claimed one at a time interleaved the threads over
    // the same heads' segments. 24 layers at 2500 positions from memory, 8 MB
    // streamed before each layer as the products would (alternated in one
    // process, 2 threads, Zen 4): bf16 cache 1.15-1.23 ms against 1.40-1.48,
    // the AVX2 kernels 3.3 against 3.9; two runs per thread 1.30.
    thread_local std::vector<int64_t> t_run_first;
    std::vector<int64_t>& run_first = t_run_first;
    run_first.assign(1, 0);
    int64_t total = 0;
    for (const Chunk& ch : chunks) total += ch.keys;
    int64_t acc = 0;
    for (int64_t c = 0; c < nchunks; ++c) {
      acc += chunks[c].keys;
      const int64_t runs = static_cast<int64_t>(run_first.size());
      if (c + 1 < nchunks && acc * threads >= total * runs) run_first.push_back(c + 1);
    }
    run_first.push_back(nchunks);
    ParallelChunks(static_cast<int64_t>(run_first.size()) - 1, threads, [&](int64_t r) {
      for (int64_t c = run_first[r]; c < run_first[r + 1]; ++c) run_chunk(c);
    });
  }
  const bool fp32_out = q_dtype == at::kFloat;
  if (!fp32_out) t_out.resize(static_cast<size_t>(seqs * heads * dim));
  float* op = fp32_out ? static_cast<float*>(out) : t_out.data();
  for (int64_t s = 0; s < seqs; ++s) {
    for (int64_t h = 0; h < heads; ++h) {
      const gemv::Segment* seg = parts.data() + part_index(s, h, 0);
      float m = seg[0].max;
      for (int64_t g = 1; g < segs[s]; ++g) m = std::max(m, seg[g].max);
      float denominator = 0;
      float* o = op + (s * heads + h) * dim;
      std::fill(o, o + dim, 0.0f);
      for (int64_t g = 0; g < segs[s]; ++g) {
        const float w = segs[s] == 1 ? 1.0f : std::exp(seg[g].max - m);
        denominator += w * seg[g].sum;
        const float* po = partial.data() + (part_index(s, h, g)) * dim;
        for (int64_t d = 0; d < dim; ++d) o[d] += w * po[d];
      }
      const float inv = 1.0f / denominator;
      for (int64_t d = 0; d < dim; ++d) o[d] *= inv;
    }
  }
  if (!fp32_out) {  // bf16 (Supported): rounded as libtorch's cast
    auto* o16 = static_cast<uint16_t*>(out);
    const int64_t n = seqs * heads * dim;
    if (avx2) {
      gemv::FloatToBf16Avx2(op, o16, n);
    } else {
      for (int64_t i = 0; i < n; ++i) o16[i] = FloatToBf16Bits(op[i]);
    }
  }
  constexpr size_t kKeepBytes = size_t{16} << 20;
  if ((scratch.capacity() + partial.capacity() + t_q.capacity() + t_out.capacity()) * sizeof(float) > kKeepBytes) {
    for (std::vector<float>* v : {&scratch, &partial, &t_q, &t_out}) std::vector<float>().swap(*v);
  }
}

namespace {

bool TransparentHugePagesEnabled() {
  static const bool enabled = [] {
    std::ifstream f("/sys/kernel/mm/transparent_hugepage/enabled");
    const std::string mode((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    return !mode.empty() && mode.find("[never]") == std::string::npos;
  }();
  return enabled;
}

void FreeHuge(void* p) { std::free(p); }

constexpr size_t kHuge = size_t{2} << 20;

// `bytes` rounded up to whole huge pages, 2 MiB aligned and advised for THP
// (freed with FreeHuge); null where THP is disabled, below 2 MiB, or out of
// memory.
void* AllocHuge(size_t bytes) {
#ifdef MADV_HUGEPAGE
  if (!TransparentHugePagesEnabled() || bytes < kHuge) return nullptr;
  const size_t rounded = (bytes + kHuge - 1) / kHuge * kHuge;
  void* mem = nullptr;
  if (posix_memalign(&mem, kHuge, rounded) != 0) return nullptr;
  madvise(mem, rounded, MADV_HUGEPAGE);  // advice only: failure is harmless
  return mem;
#else
  return nullptr;
#endif
}

// Memory shared by the storages of several small tensors: freed with the
// last of them.
struct SharedHuge {
  void* mem = nullptr;
  std::atomic<int64_t> users{0};
};

void ReleaseSharedHuge(void* context) {
  auto* block = static_cast<SharedHuge*>(context);
  if (block->users.fetch_sub(1, std::memory_order_acq_rel) == 1) {
    FreeHuge(block->mem);
    delete block;
  }
}

constexpr size_t kStorageAlign = 64;  // as libtorch's CPU allocator

}  // namespace

int64_t MoveToHugePages(const std::vector<at::Tensor>& tensors) {
  std::set<c10::StorageImpl*> done;
  std::vector<c10::StorageImpl*> small;
  size_t small_bytes = 0;
  int64_t moved = 0;
  for (const at::Tensor& t : tensors) {
    if (!t.defined() || !t.device().is_cpu() || !t.has_storage()) continue;
    c10::StorageImpl* storage = t.storage().unsafeGetStorageImpl();
    const size_t bytes = storage->nbytes();
    if (bytes == 0 || !done.insert(storage).second) continue;
    if (bytes < kHuge) {
      small.push_back(storage);
      small_bytes += (bytes + kStorageAlign - 1) / kStorageAlign * kStorageAlign;
      continue;
    }
    void* mem = AllocHuge(bytes);
    if (mem == nullptr) continue;
    std::memcpy(mem, storage->data(), bytes);
    // Swaps the memory under every tensor sharing this storage; the old
    // buffer is freed with the returned DataPtr.
    storage->set_data_ptr(c10::DataPtr(mem, mem, &FreeHuge, c10::Device(c10::kCPU)));
    moved += static_cast<int64_t>(bytes);
    // The old buffer came from the heap (TuneAllocator serves up to 32 MB
    // there and keeps freed memory): give it back now, or the peak RSS holds
    // every matrix twice.
    malloc_trim(0);
  }
  // The small ones, in the order given, packed into one block of huge pages
  // (at least 2 MiB of them: below that a block would mostly be waste).
  void* mem = small_bytes >= kHuge ? AllocHuge(small_bytes) : nullptr;
  if (mem == nullptr) return moved;
  auto* block = new SharedHuge{mem, {}};
  block->users.store(static_cast<int64_t>(small.size()));
  char* at = static_cast<char*>(mem);
  for (c10::StorageImpl* storage : small) {
    const size_t bytes = storage->nbytes();
    std::memcpy(at, storage->data(), bytes);
    storage->set_data_ptr(c10::DataPtr(at, block, &ReleaseSharedHuge, c10::Device(c10::kCPU)));
    at += (bytes + kStorageAlign - 1) / kStorageAlign * kStorageAlign;
    moved += static_cast<int64_t>(bytes);
  }
  malloc_trim(0);
  return moved;
}

at::Tensor EmptyOnHugePages(at::IntArrayRef shape, at::ScalarType dtype) {
  const size_t bytes = static_cast<size_t>(c10::multiply_integers(shape)) * c10::elementSize(dtype);
  void* mem = AllocHuge(bytes);
  if (mem == nullptr) return at::empty(shape, at::TensorOptions().dtype(dtype));
  return at::from_blob(mem, shape, &FreeHuge, at::TensorOptions().dtype(dtype));
}

}  // namespace internvl::llm
