// The decode matrix-vector kernels alone, on the matrices of one
// InternVL2-1B decode step (Qwen2-0.5B: fused q|k|v 1152x896, o 896x896,
// fused gate|up 9728x896, down 896x4864, vocabulary head 151655x896), one
// input row: GB/s of weights streamed per kernel and format, against the
// read bandwidth probed between the calls (bench_bandwidth.h), and each
// format's time per step of those matrices x 24 layers (+ head), and each
// kernel alone on one thread over a matrix in L2 (its arithmetic rate); and
// the hand-off to the helper threads that every product pays (ParallelChunks);
// and a 512-row prefill chunk's products through int8 and 4-bit matrices
// (dequantized in row tiles for libtorch's GEMM) against the dense product.
// And (--only=crossover) products of 8-32 rows through the kernels against
// libtorch's GEMMs, which take over beyond the kernels' row limits; and
// (--only=wide) batched int8 products with bf16 inputs, VNNI against the
// weights widened to bf16.
// Usage: bench_gemv [--threads=N] [--reps=N] [--batch=N]
//                   [--only=bf16|int8|int4|attention|handoff|prefill|crossover|wide]
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "bench/bench_bandwidth.h"
#include "bench/bench_util.h"
#include "core/llm/chunk_pool.h"
#include "core/llm/gemv.h"
#include "core/llm/gemv_kernels.h"
#include "core/llm/paged_kv.h"
#include "core/llm/quant.h"
#include "core/llm/quant_kernels.h"
#include "core/nn/torch_util.h"

namespace internvl::llm {
namespace {

struct Shape {
  const char* name;
  int64_t out, in, per_step;  // matrices of this shape per decode step
};

const Shape kShapes[] = {{"qkv", 1152, 896, 24},
                         {"o", 896, 896, 24},
                         {"gate_up", 9728, 896, 24},
                         {"down", 896, 4864, 24},
                         {"head", 151655, 896, 1}};

// The kernel alone on the calling thread, over a ~256 KB matrix of 896
// inputs that stays in L2 (no call overhead, no memory traffic), `batch`
// input rows: the arithmetic rate one thread brings to streaming weights.
// GB/s of weights.
double KernelAloneGbps(const std::string& kernel, const std::optional<Quantization>& quant, int64_t batch) {
  const int64_t in = 896, rows = !quant ? 144 : *quant == Quantization::kInt8 ? 288 : 576;
  const at::Tensor w = at::randn({rows, in}).mul_(0.02).to(at::kBFloat16);
  const at::Tensor x = at::randn({batch, in});
  std::vector<float> y(batch * rows), scratch(batch * in);
  std::vector<uint16_t> x16(batch * in);
  for (int64_t k = 0; k < batch * in; ++k) x16[k] = FloatToBf16Bits(x.data_ptr<float>()[k]);
  std::shared_ptr<QuantMatrix> q;
  if (quant) q = QuantMatrix::Quantize(w, *quant);
  gemv::Problem p;
  p.m = batch;
  p.x = x.data_ptr<float>();
  p.in = in;
  p.out = rows;
  p.w = w.data_ptr();
  p.w_bf16 = true;
  p.y = y.data();
  p.x_bf16 = x16.data();
  if (kernel == GemvKernelName(GemvKernel::kAvx2)) gemv::PrepareAvx2(p, scratch.data());
  quant::Activations acts;
  quant::Int8Problem p8;
  quant::Int4Problem p4;
  if (q) {
    const bool int8 = *quant == Quantization::kInt8;
    acts.Prepare(x.data_ptr<float>(), batch, in, q->padded_in(), int8 ? 0 : q->group(), gemv::CpuHasAvx2Fma());
    if (int8) {
      p8 = {&acts, q->data().data_ptr<int8_t>(), q->scale().data_ptr<float>(), nullptr, y.data(), rows, nullptr};
    } else {
      p4 = {&acts,
            q->data().data_ptr<uint8_t>(),
            q->scale().data_ptr<float>(),
            q->zmin().data_ptr<float>(),
            q->group(),
            nullptr,
            y.data(),
            rows,
            nullptr,
            q->data().stride(0),
            q->scale().stride(0)};
    }
  }
  auto call = [&] {
    if (!q) {
      return kernel == GemvKernelName(GemvKernel::kAvx2) ? gemv::RowsAvx2(p, 0, rows)
                                                         : gemv::RowsAvx512Bf16(p, 0, rows);
    }
    const bool avx2 = kernel == QuantKernelName(QuantKernel::kAvx2);
    if (*quant == Quantization::kInt8) {
      return avx2 ? quant::Int8RowsAvx2(p8, 0, rows) : quant::Int8RowsAvx512Vnni(p8, 0, rows);
    }
    return avx2 ? quant::Int4RowsAvx2(p4, 0, rows) : quant::Int4RowsAvx512Vnni(p4, 0, rows);
  };
  const int64_t bytes = q ? q->bytes() : w.numel() * 2;
  std::vector<double> times;
  for (int r = 0; r < 7; ++r) {
    const double t0 = bench::NowSeconds();
    for (int i = 0; i < 1000; ++i) call();
    times.push_back((bench::NowSeconds() - t0) / 1000);
  }
  return bytes / bench::Median(times) / 1e9;
}

// Medians of `reps` timed calls of call(0) .. call(n - 1), alternated (each
// called once first, untimed), a bandwidth probe before each timed call so
// that every call reads its matrix from memory.
std::vector<double> AlternatedMedians(bench::BandwidthProbe& probe, int reps, int n,
                                      const std::function<void(int)>& call) {
  for (int k = 0; k < n; ++k) call(k);
  std::vector<std::vector<double>> t(static_cast<size_t>(n));
  for (int r = 0; r < reps; ++r) {
    for (int k = 0; k < n; ++k) {
      probe.Measure();
      const double t0 = bench::NowSeconds();
      call(k);
      t[k].push_back(bench::NowSeconds() - t0);
    }
  }
  std::vector<double> medians;
  for (const auto& v : t) medians.push_back(bench::Median(v));
  return medians;
}

int Run(int argc, char** argv) {
  int threads = 2, reps = 30, batch = 1;
  std::string only;  // one section (a format or "attention"), or all
  for (int i = 1; i < argc; ++i) {
    absl::string_view a = argv[i];
    if (absl::StartsWith(a, "--threads=")) {
      (void)absl::SimpleAtoi(a.substr(10), &threads);
    } else if (absl::StartsWith(a, "--reps=")) {
      (void)absl::SimpleAtoi(a.substr(7), &reps);
    } else if (absl::StartsWith(a, "--only=")) {
      only = std::string(a.substr(7));
    } else if (absl::StartsWith(a, "--batch=") && absl::SimpleAtoi(a.substr(8), &batch) && batch >= 1 &&
               batch <= kMaxFastLinearRows) {
    } else {
      std::fprintf(stderr,
                   "usage: %s [--threads=N] [--reps=N] [--batch=N (1-%d)] "
                   "[--only=bf16|int8|int4|attention|handoff|prefill|crossover|wide]\n",
                   argv[0], static_cast<int>(kMaxFastLinearRows));
      return 2;
    }
  }
  SetTorchThreads(threads);
  at::InferenceMode guard;
  bench::BandwidthProbe probe;
  std::printf("threads %d; memory read bandwidth %.1f GB/s (best of 5 probes); products of %d input row(s)\n",
              TorchThreads(), probe.Best(5), batch);
  struct Format {
    std::string name;
    std::optional<Quantization> quant;  // nullopt: bf16 FastLinear
  };
  const std::vector<Format> formats = {
      {"bf16", std::nullopt}, {"int8", Quantization::kInt8}, {"int4", Quantization::kInt4}};
  for (const Format& f : formats) {
    if (!only.empty() && only != f.name) continue;
    std::vector<std::string> kernels;
    if (!f.quant) {
      for (GemvKernel k : {GemvKernel::kAvx2, GemvKernel::kAvx512Bf16})
        if (GemvKernelSupported(k)) kernels.push_back(GemvKernelName(k));
    } else {
      for (QuantKernel k : {QuantKernel::kAvx2, QuantKernel::kAvx512Vnni})
        if (QuantKernelSupported(k)) kernels.push_back(QuantKernelName(k));
    }
    for (const std::string& kernel : kernels) {
      double step_ms = 0, step_bytes = 0;
      std::printf("\n[%s/%s]\n", f.name.c_str(), kernel.c_str());
      for (const Shape& s : kShapes) {
        const at::Tensor w = at::randn({s.out, s.in}).mul_(0.02).to(at::kBFloat16);
        std::shared_ptr<QuantMatrix> q;
        if (f.quant) q = QuantMatrix::Quantize(w, *f.quant);
        // As CausalLM places them (matrices of 2 MB and more in huge pages).
        if (q) {
          MoveToHugePages({q->data(), q->scale(), q->zmin()});
        } else {
          MoveToHugePages({w});
        }
        const int64_t bytes = q ? q->bytes() : w.numel() * 2;
        const at::Tensor x = at::randn({batch, s.in}).to(at::kBFloat16);
        if (f.quant) {
          for (QuantKernel k : {QuantKernel::kAvx2, QuantKernel::kAvx512Vnni})
            if (kernel == QuantKernelName(k)) ForceQuantKernel(k);
        } else {
          for (GemvKernel k : {GemvKernel::kAvx2, GemvKernel::kAvx512Bf16})
            if (kernel == GemvKernelName(k)) ForceGemvKernel(k);
        }
        auto call = [&] { return q ? QuantLinear(x, *q, {}) : Linear(x, w, {}); };
        call();
        // A small product of another matrix: wakes the helper threads after
        // the probe, as in a decode step where products follow each other
        // (asleep, they added ~0.1 ms to each call: qkv and o measured at
        // 5-10 GB/s, the step's sum ~50% too slow) without bringing the
        // measured matrix into the caches. Rows for one chunk per thread
        // (SplitRows' chunks hold >= 64K weights): a single chunk runs on
        // the caller and wakes nobody, as 64 rows did for 896 inputs (the
        // qkv, o, gate_up and head rows then paid the helper's wake-up,
        // 1152 x 896 bf16 0.050 against 0.038 ms, alternated in one run).
        const int64_t wake_rows = threads * (((int64_t{1} << 16) / s.in + 4) / 4 * 4);
        const at::Tensor wake_w = at::randn({wake_rows, s.in}).to(at::kBFloat16);
        std::shared_ptr<QuantMatrix> wake_q;
        if (q) wake_q = QuantMatrix::Quantize(wake_w, *f.quant);
        auto wake = [&] { return wake_q ? QuantLinear(x, *wake_q, {}) : Linear(x, wake_w, {}); };
        std::vector<double> times, bw;
        for (int r = 0; r < reps; ++r) {
          // A fresh matrix would not fit the caches anyway except the
          // smallest; the probe between calls also evicts them.
          bw.push_back(probe.Measure());
          wake();
          const double t0 = bench::NowSeconds();
          call();
          times.push_back(bench::NowSeconds() - t0);
        }
        const double t = bench::Median(times), b = bench::Median(bw);
        std::printf(
            "  %-8s %6ldx%-5ld %7.2f MB %7.3f ms = %5.1f GB/s = %3.0f%% of the probe (%.1f GB/s); %.0f GFLOP/s\n",
            s.name, static_cast<long>(s.out), static_cast<long>(s.in), bytes / 1e6, t * 1e3, bytes / t / 1e9,
            100.0 * bytes / t / 1e9 / b, b, 2.0 * batch * s.out * s.in / t / 1e9);
        step_ms += t * 1e3 * s.per_step;
        step_bytes += static_cast<double>(bytes) * s.per_step;
      }
      std::printf("  one decode step's matrices: %.0f MB in %.1f ms\n", step_bytes / 1e6, step_ms);
      const double alone = KernelAloneGbps(kernel, f.quant, batch);
      std::printf("  kernel alone, 1 thread, ~256 KB in L2: %.1f GB/s", alone);
      if (!f.quant) std::printf(", %.0f GFLOP/s", alone * batch);  // (2 flops per 2-byte weight and input row)
      std::printf("\n");
      for (const int64_t rows : {int64_t{64}, int64_t{512}}) {
        // A matrix that stays in the caches, called back to back: 64 rows
        // show the fixed cost of a call (input casts, output allocation, the
        // hand-off to the helper threads), 512 rows the kernel's arithmetic
        // rate when memory is not the limit.
        const at::Tensor w = at::randn({rows, 896}).mul_(0.02).to(at::kBFloat16);
        std::shared_ptr<QuantMatrix> q;
        if (f.quant) q = QuantMatrix::Quantize(w, *f.quant);
        const int64_t bytes = q ? q->bytes() : w.numel() * 2;
        const at::Tensor x = at::randn({batch, 896}).to(at::kBFloat16);
        auto call = [&] { return q ? QuantLinear(x, *q, {}) : Linear(x, w, {}); };
        std::vector<double> times;
        for (int r = 0; r < 20; ++r) {
          const double t0 = bench::NowSeconds();
          for (int i = 0; i < 100; ++i) call();
          times.push_back((bench::NowSeconds() - t0) / 100);
        }
        const double t = bench::Median(times);
        std::printf("  in cache, %4ldx896 back to back: %6.1f us per call = %5.1f GB/s, %.0f GFLOP/s\n",
                    static_cast<long>(rows), t * 1e6, bytes / t / 1e9, 2.0 * batch * rows * 896 / t / 1e9);
      }
    }
  }
  // Decode attention of one token at 2500 positions (InternVL2-1B: 14 query
  // heads over 2 KV heads of 64), x 24 layers, each layer its own cache (read
  // from memory, as in a decode step): bf16 cache and queries (a bf16 model),
  // and fp32 (bf16 weights computed in fp32). The cache in 2 MiB pages, as the
  // engine's KV pool (EmptyOnHugePages), and in 4 KiB pages for comparison
  // (the two alternated rep by rep).
  if (only.empty() || only == "attention") {
    const int64_t len = 2500, bs = 16, blocks = (len + bs - 1) / bs, layers = 24;
    std::vector<int32_t> table;
    for (int32_t b = 0; b < blocks; ++b) table.push_back(b);
    for (at::ScalarType dtype : {at::kBFloat16, at::kFloat}) {
      std::vector<at::Tensor> k[2], v[2];  // [0]: 2 MiB pages, [1]: 4 KiB pages
      // Laid out as the engine's pool (KV-head-major storage, paged_kv.h).
      for (int pages = 0; pages < 2; ++pages) {
        for (int64_t l = 0; l < layers; ++l) {
          for (std::vector<at::Tensor>* pool : {&k[pages], &v[pages]}) {
            const std::vector<int64_t> storage = {2, blocks, bs, 64};
            at::Tensor t = KVHeadMajor(pages == 0 ? EmptyOnHugePages(storage, dtype) : at::empty(storage, dtype));
            pool->push_back(t.copy_(at::randn({blocks, 2, bs, 64})));
          }
        }
      }
      const at::Tensor q = at::randn({1, 14, 64}).to(dtype);
      const double kv_mb = 2.0 * k[0][0].numel() * k[0][0].element_size() / 1e6;
      std::printf(
          "\n[attention] 1 token over %ld positions, 14 heads / 2 KV heads of 64, %s (%.1f MB of K+V per layer)\n",
          static_cast<long>(len), c10::toString(dtype), kv_mb);
      for (GemvKernel kernel : {GemvKernel::kAvx2, GemvKernel::kAvx512Bf16}) {
        if (!ForceGemvKernel(kernel)) continue;
        std::vector<double> times[2], bw;
        for (int r = 0; r < reps; ++r) {
          bw.push_back(probe.Measure());
          for (int pages = 0; pages < 2; ++pages) {
            const double t0 = bench::NowSeconds();
            for (int64_t l = 0; l < layers; ++l) PagedDecodeAttention(q, k[pages][l], v[pages][l], {&table}, {len});
            times[pages].push_back(bench::NowSeconds() - t0);
          }
        }
        const double b = bench::Median(bw);
        for (int pages = 0; pages < 2; ++pages) {
          const double t = bench::Median(times[pages]);
          std::printf("  %-10s %s %.2f ms per token (24 layers) = %.1f GB/s of K+V = %.0f%% of the probe (%.1f GB/s)\n",
                      GemvKernelName(kernel),
                      pages == 0 ? "2 MiB pages (the pool):" : "4 KiB pages:           ", t * 1e3,
                      layers * kv_mb / 1e3 / t, 100.0 * layers * kv_mb / 1e3 / t / b, b);
        }
      }
    }
  }
  // A 512-row prefill chunk's products (the engine's chunk) through the
  // quantized matrices, which prefill dequantizes into the compute dtype in
  // row tiles (QuantPrefillTileRows) for libtorch's GEMM, against the same
  // product over the bf16 matrix: the dequantization's cost. Calls
  // alternated; bf16 compute where the CPU has native bf16 matmuls.
  if (only.empty() || only == "prefill") {
    const at::ScalarType dtype = CpuHasNativeBf16Matmul() ? at::kBFloat16 : at::kFloat;
    std::printf("\n[prefill] 512 rows, compute %s (medians of 12 calls)\n", c10::toString(dtype));
    for (const Shape& s : kShapes) {
      if (std::string(s.name) == "head") continue;
      const at::Tensor w = at::randn({s.out, s.in}).mul_(0.02).to(at::kBFloat16);
      const std::shared_ptr<QuantMatrix> q8 = QuantMatrix::Quantize(w, Quantization::kInt8);
      const std::shared_ptr<QuantMatrix> q4 = QuantMatrix::Quantize(w, Quantization::kInt4);
      const at::Tensor x = at::randn({512, s.in}).to(dtype), wc = w.to(dtype);
      std::vector<double> t[3];
      for (int r = 0; r < 12; ++r) {
        for (int k = 0; k < 3; ++k) {
          const double t0 = bench::NowSeconds();
          if (k == 0) at::linear(x, wc);
          if (k == 1) QuantLinear(x, *q8, {});
          if (k == 2) QuantLinear(x, *q4, {});
          t[k].push_back(bench::NowSeconds() - t0);
        }
      }
      const double dense = bench::Median(t[0]);
      const int64_t tile = QuantPrefillTileRows(s.out, s.in, c10::elementSize(dtype));
      std::printf(
          "  %-8s %6ldx%-5ld %s %.2f ms (%.0f GFLOP/s), int8 %.2f ms (%.2fx), int4 %.2f ms (%.2fx); %ld tile(s)\n",
          s.name, static_cast<long>(s.out), static_cast<long>(s.in), c10::toString(dtype), dense * 1e3,
          2.0 * 512 * s.out * s.in / dense / 1e9, bench::Median(t[1]) * 1e3, bench::Median(t[1]) / dense,
          bench::Median(t[2]) * 1e3, bench::Median(t[2]) / dense, static_cast<long>((s.out + tile - 1) / tile));
    }
  }
  // Where the decode kernels hand over to libtorch's GEMMs: products of 8-32
  // input rows (decode steps of as many sequences) from memory through each
  // kernel (FastLinearRows, QuantLinearRows: whatever the limit) and through
  // the path that takes more rows (Linear with FastLinear off: at::linear,
  // the weights cast to fp32 first where they are stored narrower than the
  // inputs; QuantLinearTiled), the two alternated with a bandwidth probe
  // before each call. FastLinearMaxRows and QuantLinearMaxRows are set from
  // these figures; each path's limit here is printed.
  if (only == "crossover") {
    const at::ScalarType quant_x = CpuHasNativeBf16Matmul() ? at::kBFloat16 : at::kFloat;
    struct Path {
      std::string name;
      at::ScalarType x, w;
      std::optional<Quantization> quant;
      GemvKernel gemv = GemvKernel::kAvx2;
      QuantKernel qk = QuantKernel::kAvx2;
    };
    std::vector<Path> paths;
    if (GemvKernelSupported(GemvKernel::kAvx512Bf16)) {
      paths.push_back({"bf16 x bf16, avx512bf16", at::kBFloat16, at::kBFloat16, std::nullopt, GemvKernel::kAvx512Bf16});
    }
    if (GemvKernelSupported(GemvKernel::kAvx2)) {
      paths.push_back({"bf16 x bf16, avx2", at::kBFloat16, at::kBFloat16, std::nullopt, GemvKernel::kAvx2});
      paths.push_back({"fp32 x bf16, avx2", at::kFloat, at::kBFloat16, std::nullopt, GemvKernel::kAvx2});
      paths.push_back({"fp32 x fp32, avx2", at::kFloat, at::kFloat, std::nullopt, GemvKernel::kAvx2});
    }
    for (QuantKernel k : {QuantKernel::kAvx2, QuantKernel::kAvx512Vnni}) {
      if (!QuantKernelSupported(k)) continue;
      for (Quantization qz : {Quantization::kInt8, Quantization::kInt4}) {
        paths.push_back({std::string(qz == Quantization::kInt8 ? "int8" : "int4") + " x " + c10::toString(quant_x) +
                             ", " + QuantKernelName(k),
                         quant_x, at::kBFloat16, qz, GemvKernel::kAvx2, k});
      }
    }
    std::printf("\n[crossover] kernel vs libtorch's GEMM, from memory (medians of %d alternated calls)\n", reps);
    for (const Path& path : paths) {
      ForceGemvKernel(path.gemv);
      ForceQuantKernel(path.qk);
      std::printf("  %s (runs up to %ld rows):\n", path.name.c_str(),
                  static_cast<long>(path.quant ? QuantLinearMaxRows() : FastLinearMaxRows(path.x, path.w)));
      for (const Shape& s : kShapes) {
        if (std::string(s.name) == "head" || std::string(s.name) == "o") continue;
        const at::Tensor w = at::randn({s.out, s.in}).mul_(0.02).to(path.w);
        std::shared_ptr<QuantMatrix> q;
        if (path.quant) q = QuantMatrix::Quantize(w.to(at::kBFloat16), *path.quant);
        q ? MoveToHugePages({q->data(), q->scale(), q->zmin()}) : MoveToHugePages({w});
        for (const int64_t rows : {int64_t{8}, int64_t{16}, int64_t{24}, int64_t{32}}) {
          const at::Tensor x = at::randn({rows, s.in}).to(path.x);
          at::Tensor y = at::empty({rows, s.out}, x.options());
          auto kernel = [&] {
            q ? QuantLinearRows(x.data_ptr(), path.x, rows, *q, {}, y.data_ptr())
              : FastLinearRows(x.data_ptr(), path.x, rows, w, {}, y.data_ptr());
          };
          auto gemm = [&] {
            if (q) return QuantLinearTiled(x, *q, {});
            SetFastLinearEnabled(false);
            at::Tensor out = Linear(x, w, {});
            SetFastLinearEnabled(true);
            return out;
          };
          const std::vector<double> t =
              AlternatedMedians(probe, reps, 2, [&](int k) { k == 0 ? kernel() : (void)gemm(); });
          const double tk = t[0], tg = t[1];
          std::printf("    %-8s %6ldx%-5ld %2ld rows: kernel %6.3f ms, libtorch %6.3f ms (%.2fx)\n", s.name,
                      static_cast<long>(s.out), static_cast<long>(s.in), static_cast<long>(rows), tk * 1e3, tg * 1e3,
                      tg / tk);
        }
      }
    }
  }
  // Batched int8 products of bf16 inputs (decode steps of several
  // sequences of a bf16 model) through the VNNI kernel and through the
  // weights widened to bf16 (the avx512bf16 family from QuantWideMinRows()
  // rows; INTERNVL_QUANT_WIDE_MIN_ROWS=1 widens every row count here), with
  // the bf16 matrix's own product beside them: the three alternated, a
  // bandwidth probe before each call (matrices read from memory).
  if (only == "wide" && QuantKernelSupported(QuantKernel::kAvx512Bf16) &&
      GemvKernelSupported(GemvKernel::kAvx512Bf16)) {
    ForceGemvKernel(GemvKernel::kAvx512Bf16);
    std::printf(
        "\n[wide] bf16 inputs: avx512vnni / avx512bf16 (widened from %ld rows) / bf16 weights, ms, "
        "medians of %d alternated calls\n",
        static_cast<long>(QuantWideMinRows()), reps);
    for (const Shape& s : kShapes) {
      if (std::string(s.name) == "head" || std::string(s.name) == "o") continue;
      const at::Tensor w = at::randn({s.out, s.in}).mul_(0.02).to(at::kBFloat16);
      const std::shared_ptr<QuantMatrix> q = QuantMatrix::Int8(w);
      MoveToHugePages({q->data(), q->scale(), w});
      for (const int64_t rows : {int64_t{4}, int64_t{8}, int64_t{12}, int64_t{16}, int64_t{24}, int64_t{32}}) {
        const at::Tensor x = at::randn({rows, s.in}).to(at::kBFloat16);
        at::Tensor y = at::empty({rows, s.out}, x.options());
        const std::vector<double> t = AlternatedMedians(probe, reps, 3, [&](int k) {
          if (k == 2) return FastLinearRows(x.data_ptr(), at::kBFloat16, rows, w, {}, y.data_ptr());
          ForceQuantKernel(k == 0 ? QuantKernel::kAvx512Vnni : QuantKernel::kAvx512Bf16);
          QuantLinearRows(x.data_ptr(), at::kBFloat16, rows, *q, {}, y.data_ptr());
        });
        const double a = t[0], b = t[1], c = t[2];
        std::printf("  int8 %-8s %6ldx%-5ld %2ld rows: %6.3f / %6.3f / %6.3f ms (widened %.2fx vnni, %.2fx bf16)\n",
                    s.name, static_cast<long>(s.out), static_cast<long>(s.in), static_cast<long>(rows), a * 1e3,
                    b * 1e3, c * 1e3, a / b, c / b);
      }
    }
    ForceQuantKernel(std::nullopt);
    ForceGemvKernel(std::nullopt);
  }
  // The hand-off: one ParallelChunks of one chunk per thread, each chunk a
  // fixed amount of arithmetic on the thread's own data (none, ~0.35 us,
  // ~3.5 us on the Zen 5 VM), back to back as a decode step's products come
  // (~146 a token for InternVL2-1B: bench_decode).
  // The time over the work's own on one thread is what each product pays
  // to share its rows.
  if (only.empty() || only == "handoff") {
    std::printf("\n[hand-off] ParallelChunks of %d chunks, back to back (medians of 5000)\n", threads);
    // Each chunk's result on a cache line of its own (no line shared but
    // the hand-off's).
    std::vector<uint64_t> results(static_cast<size_t>(threads) * 8 + 8);
    uint64_t* slots = results.data() + (8 - reinterpret_cast<uintptr_t>(results.data()) / 8 % 8) % 8;
    for (const int64_t work : {int64_t{0}, int64_t{300}, int64_t{3000}}) {
      auto chunk = [&](int64_t i) {
        uint64_t x = static_cast<uint64_t>(i) + 1;
        for (int64_t j = 0; j < work; ++j) x = x * 6364136223846793005ull + 1442695040888963407ull;
        slots[i * 8] = x;
      };
      std::vector<double> shared, alone;
      for (int r = 0; r < 5000; ++r) {
        double t0 = bench::NowSeconds();
        ParallelChunks(threads, threads, chunk);
        shared.push_back(bench::NowSeconds() - t0);
        t0 = bench::NowSeconds();
        chunk(0);
        alone.push_back(bench::NowSeconds() - t0);
      }
      std::printf("  %4ld steps a chunk: %.2f us a call, one chunk alone %.2f us\n", static_cast<long>(work),
                  bench::Median(shared) * 1e6, bench::Median(alone) * 1e6);
    }
  }
  ForceQuantKernel(std::nullopt);
  ForceGemvKernel(std::nullopt);
  return 0;
}

}  // namespace
}  // namespace internvl::llm

int main(int argc, char** argv) { return internvl::llm::Run(argc, argv); }
