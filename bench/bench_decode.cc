// LLM decode benchmark: an InternVL2-1B-sized decoder (Qwen2-0.5B shapes)
// with random weights built in memory, batch 1:
//   - prefill of ~1300 tokens (5 tiles x 256 image tokens + text),
//   - decode ms/token and tokens/s,
//   - the same run's memory read bandwidth (bench_bandwidth.h, probed between
//     decode steps), and decode speed as a fraction of the bandwidth bound
//     (bytes of weights + KV read per token / bandwidth),
//   - peak RSS.
// Precisions: "fp32"; "bf16" = what `--dtype bf16` runs as on this CPU
// (llm::Precision::ForRequested: bf16 weights, computed in fp32 without
// native bf16 matmuls); "bf16-compute" = bf16 weights and activations;
// "bf16-fp32" = bf16 weights computed in fp32 (what "bf16" is on CPUs
// without native bf16 matmuls, measurable on any CPU).
// --libtorch turns FastLinear (core/llm/gemv.h) off, for comparison.
// --batch=N also decodes N sequences together (one batched step per token,
// the engine's continuous batching): ms/step and aggregate tokens/s against
// batch 1.
// --kv-dtype=auto|bf16|fp32 as the engine's --kv-cache-dtype (auto: the
// weights' dtype, so bf16 weights keep a bf16 cache under fp32 compute).
// --temperature=T (> 0: sampling, with HF's default top_k 50) and --top-p=P
// choose the next tokens as a client asking for them would: each sequence
// draws from its own row of the logits with its own llm::Sampler, as the
// engine does; the default is greedy (the same Sampler's argmax).
// The steps run CausalLM::ForwardPaged over a paged KV pool, as the engine
// does, without its scheduler and threads. With several precisions, all are
// built and prefilled first and their decode steps alternate, so the ratios
// between them (printed against the first) come from the same minutes of a
// shared machine.
// Usage: bench_decode [--threads=N] [--dtypes=bf16,fp32] [--decode=N] [--prompt=N] [--batch=N] [--libtorch]
//                     [--kv-dtype=auto|bf16|fp32] [--temperature=T] [--top-p=P]
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "bench/bench_bandwidth.h"
#include "bench/bench_matmul.h"
#include "bench/bench_util.h"
#include "core/config.h"
#include "core/llm/causal_lm.h"
#include "core/llm/chunk_pool.h"
#include "core/llm/gemv.h"
#include "core/llm/modules.h"
#include "core/llm/sampler.h"
#include "core/nn/attention.h"
#include "core/nn/torch_util.h"
#include "core/status.h"

namespace internvl::llm {
namespace {

// Qwen2-0.5B-Instruct as used by InternVL2-1B (vocab extended to 151655).
LlmConfig InternVL2_1BConfig() {
  LlmConfig c;
  c.arch = LlmArch::kQwen2;
  c.architecture = "Qwen2ForCausalLM";
  c.vocab_size = 151655;
  c.hidden_size = 896;
  c.intermediate_size = 4864;
  c.num_hidden_layers = 24;
  c.num_attention_heads = 14;
  c.num_key_value_heads = 2;
  c.max_position_embeddings = 32768;
  c.rms_norm_eps = 1e-6;
  c.rope_theta = 1000000.0;
  c.attention_bias = true;
  return c;
}

// `batch` sequences over one paged pool, each with room for `capacity`
// positions: prefilled one by one, then decoded together (each sequence's
// next token chosen by its own sampler from its row of the logits, as the
// engine does; one ForwardPaged per step for all of them).
class Sequences {
 public:
  static constexpr int kBlock = 16;
  Sequences(CausalLM& lm, int batch, int64_t capacity, std::optional<at::ScalarType> kv_dtype = std::nullopt,
            const SamplingParams& sampling = {})
      : lm_(lm), batch_(batch) {
    const int64_t per_seq = (capacity + kBlock - 1) / kBlock;
    auto pool = lm.NewPagedPool(per_seq * batch, kBlock, kv_dtype);
    if (!pool.ok()) return;
    pool_ = std::move(*pool);
    for (int b = 0; b < batch; ++b) {
      PagedSeq s;
      for (int64_t i = 0; i < per_seq; ++i) s.blocks.push_back(static_cast<int32_t>(b * per_seq + i));
      s.logits = true;
      seqs_.push_back(s);
      ropes_.push_back(lm.NewRotary());
      SamplingParams own = sampling;
      own.seed = sampling.seed + b;
      auto sampler = Sampler::Create(own);
      if (!sampler.ok()) {
        pool_.reset();
        return;
      }
      samplers_.push_back(std::move(*sampler));
    }
    next_.assign(batch, 0);
    generated_.assign(batch, {});
  }
  bool ok() const { return pool_ != nullptr; }
  at::ScalarType dtype() const { return pool_->dtype(); }
  int64_t pool_bytes_per_position() const {
    return PagedKVPool::BytesPerBlock(lm_.config(), kBlock, pool_->dtype()) / kBlock;
  }

  // Prefills every sequence with `embeds` [T, H] in chunks of `chunk`
  // tokens (the engine's --max-batched-tokens step budget); the first tokens
  // are sampled.
  absl::Status Prefill(const at::Tensor& embeds, int64_t chunk = 512) {
    const int64_t total = embeds.size(0);
    for (int b = 0; b < batch_; ++b) {
      for (int64_t start = 0; start < total; start += chunk) {
        PagedSeq s = seqs_[b];
        s.start = start;
        s.num_new = std::min(chunk, total - start);
        s.logits = start + s.num_new == total;
        ropes_[b].Observe(start + s.num_new);
        auto logits = lm_.ForwardPaged(embeds.narrow(0, start, s.num_new), {s}, {&ropes_[b]}, *pool_);
        if (!logits.ok()) return logits.status();
        if (s.logits) INTERNVL_RETURN_IF_ERROR(Sample(b, *logits));
      }
      seqs_[b].start = total;
    }
    return absl::OkStatus();
  }

  // One decode step of every sequence (embedding + batched forward + greedy).
  absl::Status Step() {
    std::vector<PagedSeq> step;
    std::vector<const RotaryEmbedding*> ropes;
    for (int b = 0; b < batch_; ++b) {
      PagedSeq s = seqs_[b];
      s.num_new = 1;
      ropes_[b].Observe(s.start + 1);
      step.push_back(std::move(s));
      ropes.push_back(&ropes_[b]);
    }
    auto e = lm_.Embed(at::tensor(next_, at::kLong).view({1, batch_}));
    if (!e.ok()) return e.status();
    auto logits = lm_.ForwardPaged((*e)[0], step, ropes, *pool_);
    if (!logits.ok()) return logits.status();
    for (int b = 0; b < batch_; ++b) {
      INTERNVL_RETURN_IF_ERROR(Sample(b, logits->narrow(0, b, 1)));
      ++seqs_[b].start;
    }
    return absl::OkStatus();
  }

 private:
  CausalLM& lm_;
  const int batch_;
  std::unique_ptr<PagedKVPool> pool_;
  std::vector<PagedSeq> seqs_;
  std::vector<RotaryEmbedding> ropes_;
  std::vector<Sampler> samplers_;
  std::vector<int64_t> next_;
  std::vector<std::vector<int64_t>> generated_;  // the repetition penalty's context

  // Sequence b's next token from its logits row [1, V].
  absl::Status Sample(int b, const at::Tensor& row) {
    auto id = samplers_[b].Next(row, {generated_[b]});
    if (!id.ok()) return id.status();
    next_[b] = (*id)[0];
    generated_[b].push_back(next_[b]);
    return absl::OkStatus();
  }
};

// Per-token cost of everything but the weight traffic: the same 24-layer
// Qwen2 structure with tiny matrices (hidden 64), so each step is op
// dispatch, allocation and threading overhead.
double OverheadMsPerToken(const Precision& precision) {
  LlmConfig c = InternVL2_1BConfig();
  c.vocab_size = 512;
  c.hidden_size = 64;
  c.intermediate_size = 128;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  auto lm = CausalLM::CreateRandom(c, precision, /*seed=*/1);
  if (!lm.ok()) return -1;
  Sequences seqs(**lm, 1, 256);
  if (!seqs.ok() || !seqs.Prefill(at::randn({8, c.hidden_size})).ok()) return -1;
  std::vector<double> steps;
  for (int i = 0; i < 200; ++i) {
    const double t0 = bench::NowSeconds();
    if (!seqs.Step().ok()) return -1;
    steps.push_back(bench::NowSeconds() - t0);
  }
  return bench::Median(steps) * 1e3;
}

// "bf16", "fp32", "bf16-compute", "bf16-fp32", each optionally "+int8" / "+int4"
// (quantized at load time, as --quantize), then optionally "+kN": N head
// candidates (Precision::head_candidates, --head-candidates; "+k0": the
// 4-bit head in one pass).
absl::StatusOr<Precision> ParsePrecision(const std::string& name) {
  const std::vector<std::string> parts = absl::StrSplit(name, '+');
  Precision p;
  if (parts[0] == "bf16-compute") {
    p = Precision::Uniform(at::kBFloat16);
  } else if (parts[0] == "bf16-fp32") {
    p = Precision{at::kFloat, at::kBFloat16};
  } else {
    auto dtype = ParseComputeDType(parts[0]);
    if (!dtype.ok()) return dtype.status();
    p = Precision::ForRequested(*dtype);
  }
  if (parts.size() > 3) return absl::InvalidArgumentError(absl::StrCat("bad precision ", name));
  if (parts.size() >= 2) {
    auto q = ParseQuantization(parts[1]);
    if (!q.ok()) return q.status();
    p.quantize = *q;
  }
  if (parts.size() == 3) {
    int64_t k = 0;
    if (parts[2].size() < 2 || parts[2][0] != 'k' || !absl::SimpleAtoi(parts[2].substr(1), &k) || k < 0) {
      return absl::InvalidArgumentError(absl::StrCat("bad precision ", name, " (+kN: N head candidates)"));
    }
    p.head_candidates = k;
  }
  return p;
}

int Run(int argc, char** argv) {
  int threads = 2, decode_tokens = 32, prompt = 5 * 256 + 40, batch = 1;
  bool libtorch = false;
  SamplingParams sampling;                              // greedy
  at::ScalarType kv_dtype = at::ScalarType::Undefined;  // auto: the model's DefaultKvDtype
  std::vector<std::string> dtypes = {"bf16", "fp32"};
  for (int i = 1; i < argc; ++i) {
    absl::string_view a = argv[i];
    auto value = [&](absl::string_view flag) -> std::string { return std::string(a.substr(flag.size())); };
    if (absl::StartsWith(a, "--threads=")) {
      (void)absl::SimpleAtoi(value("--threads="), &threads);
    } else if (absl::StartsWith(a, "--decode=")) {
      (void)absl::SimpleAtoi(value("--decode="), &decode_tokens);
    } else if (absl::StartsWith(a, "--prompt=")) {
      (void)absl::SimpleAtoi(value("--prompt="), &prompt);
    } else if (absl::StartsWith(a, "--batch=")) {
      (void)absl::SimpleAtoi(value("--batch="), &batch);
    } else if (absl::StartsWith(a, "--dtypes=")) {
      dtypes = absl::StrSplit(value("--dtypes="), ',');
    } else if (absl::StartsWith(a, "--temperature=")) {
      (void)absl::SimpleAtod(value("--temperature="), &sampling.temperature);
      sampling.do_sample = sampling.temperature > 0;
      if (!sampling.do_sample) sampling.temperature = 1.0;
    } else if (absl::StartsWith(a, "--top-p=")) {
      (void)absl::SimpleAtod(value("--top-p="), &sampling.top_p);
    } else if (a == "--libtorch") {
      libtorch = true;
    } else if (a == "--kv-dtype=bf16") {
      kv_dtype = at::kBFloat16;
    } else if (a == "--kv-dtype=fp32") {
      kv_dtype = at::kFloat;
    } else if (a == "--kv-dtype=auto") {
      kv_dtype = at::ScalarType::Undefined;
    } else {
      std::fprintf(
          stderr,
          "usage: %s [--threads=N] [--dtypes=bf16,fp32,bf16-compute,bf16+int8,bf16+int4] [--decode=N] [--prompt=N] "
          "[--batch=N] [--libtorch] [--kv-dtype=auto|bf16|fp32] [--temperature=T] [--top-p=P]\n",
          argv[0]);
      return 2;
    }
  }
  if (decode_tokens < 1 || prompt < 1 || batch < 1) return 2;
  if (absl::Status s = sampling.Validate(); !s.ok()) {
    std::fprintf(stderr, "%s\n", s.ToString().c_str());
    return 2;
  }
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // progress visible through pipes
  SetTorchThreads(threads);
  SetFastLinearEnabled(!libtorch);
  at::InferenceMode inference;
  const LlmConfig config = InternVL2_1BConfig();
  bench::BandwidthProbe probe;
  std::printf(
      "threads %d, linear layers: %s, quantized layers: %s, fp32 matmuls: %s, bf16 prefill attention: %s, memory read "
      "bandwidth %.1f GB/s (best of 5 probes)\n",
      TorchThreads(), libtorch ? "libtorch" : FastLinearKernel(), ActiveQuantKernelDescription().c_str(),
      BlasThreading().c_str(), AttentionKernelName(), probe.Best(5));
  if (sampling.do_sample) {
    std::printf("next tokens sampled: temperature %g, top_k %lld, top_p %g (a sampler per sequence)\n",
                sampling.temperature, static_cast<long long>(sampling.top_k), sampling.top_p);
  } else {
    std::printf("next tokens greedy (a sampler per sequence)\n");
  }

  // Every precision is built and prefilled first; their decode steps then
  // alternate (one step of each in turn, a bandwidth probe after each), so
  // their ratios compare steps taken under the same neighbours on a shared
  // machine, not minutes apart.
  struct Run {
    std::string name;
    Precision precision;
    std::unique_ptr<CausalLM> lm;
    std::unique_ptr<Sequences> seqs;
    std::vector<double> steps, bandwidths;
    // Per step: how long the callers of the step's hand-offs to the helper
    // threads (products, attention, SwiGLU) waited for the helpers' chunks
    // (ChunkPoolWaits), and how many hand-offs there were.
    std::vector<double> waits;
    int64_t handed = 0;
    int64_t fused_layers = 0;  // run by the fused decode step (modules.h)
  };
  std::vector<Run> runs;
  const at::Tensor embeds = at::randn({prompt, config.hidden_size}).mul_(0.02);
  for (const std::string& name : dtypes) {
    auto precision = ParsePrecision(name);
    if (!precision.ok()) {
      std::fprintf(stderr, "%s\n", precision.status().ToString().c_str());
      return 2;
    }
    double t0 = bench::NowSeconds();
    auto lm = CausalLM::CreateRandom(config, *precision, /*seed=*/1);
    if (!lm.ok()) {
      std::fprintf(stderr, "%s\n", lm.status().ToString().c_str());
      return 1;
    }
    const at::ScalarType kv = kv_dtype == at::ScalarType::Undefined ? (*lm)->DefaultKvDtype() : kv_dtype;
    std::printf(
        "\n[%s] weights %s, compute %s, KV cache %s: %.1fM parameters, %.0f MB read per token, built in %.1f s\n",
        name.c_str(), (*lm)->weight_format().c_str(), c10::toString(precision->compute), c10::toString(kv),
        (*lm)->num_parameters() / 1e6, (*lm)->decode_weight_bytes() / 1e6, bench::NowSeconds() - t0);
    auto seqs = std::make_unique<Sequences>(**lm, 1, prompt + decode_tokens + 1, kv, sampling);
    if (!seqs->ok()) {
      std::fprintf(stderr, "no KV pool of %s for this model (fp32 needs fp32 compute)\n", c10::toString(kv));
      return 1;
    }

    // Warm-up (oneDNN primitive creation, allocator), then one timed prefill.
    {
      Sequences warm(**lm, 1, 64);
      if (!warm.ok() || !warm.Prefill(embeds.narrow(0, 0, std::min(prompt, 32))).ok()) return 1;
    }
    t0 = bench::NowSeconds();
    if (absl::Status s = seqs->Prefill(embeds); !s.ok()) {
      std::fprintf(stderr, "%s\n", s.ToString().c_str());
      return 1;
    }
    const double prefill_s = bench::NowSeconds() - t0;
    // Its arithmetic: 2 flops per weight per token (the head on the last
    // token only) + causal attention (q k^T and p v: 2 * 2 * T^2 / 2 * width
    // per layer), against the compute dtype's matmul peak measured now.
    const double layer_params =
        static_cast<double>((*lm)->num_parameters() - (*lm)->module()->model->embed->weight.numel() -
                            static_cast<int64_t>(config.vocab_size) * config.hidden_size);
    const double prefill_flops = 2.0 * layer_params * prompt + 2.0 * config.vocab_size * config.hidden_size +
                                 2.0 * static_cast<double>(prompt) * prompt * config.num_attention_heads *
                                     config.head_dim() * config.num_hidden_layers;
    const double prefill_peak = bench::MatmulPeak(precision->compute);
    std::printf(
        "[%s] prefill %d tokens in chunks of 512 (as the engine): %.0f ms (%.0f tokens/s) = %.1f GFLOP at %.0f GFLOP/s "
        "= %.0f%% of the %s "
        "matmul peak (%.0f GFLOP/s, measured now)\n",
        name.c_str(), prompt, prefill_s * 1e3, prompt / prefill_s, prefill_flops / 1e9, prefill_flops / prefill_s / 1e9,
        100.0 * prefill_flops / prefill_s / prefill_peak, c10::toString(precision->compute), prefill_peak / 1e9);
    runs.push_back(Run{name, *precision, std::move(*lm), std::move(seqs), {}, {}, {}, 0, 0});
  }

  // Decode: greedy feed-back, timing each step (embedding + forward +
  // argmax), with a bandwidth probe after each so that both see the same
  // neighbours; the precisions' steps interleaved.
  if (runs.size() > 1) std::printf("\ndecoding %d tokens of each, their steps interleaved\n", decode_tokens);
  for (int i = 0; i < decode_tokens; ++i) {
    for (Run& r : runs) {
      const int64_t fused0 = FusedDecodeLayers();
      const ChunkWaits waits0 = ChunkPoolWaits();
      const double t0 = bench::NowSeconds();
      if (!r.seqs->Step().ok()) return 1;
      r.steps.push_back(bench::NowSeconds() - t0);
      const ChunkWaits waits1 = ChunkPoolWaits();
      r.waits.push_back((waits1.wait_ns - waits0.wait_ns) * 1e-9);
      r.handed += waits1.calls - waits0.calls;
      r.fused_layers += FusedDecodeLayers() - fused0;
      r.bandwidths.push_back(probe.Measure());
    }
  }

  for (Run& r : runs) {
    const std::string& name = r.name;
    CausalLM& lm = *r.lm;
    const Precision& precision = r.precision;
    const std::vector<double>& steps = r.steps;
    const double median = bench::Median(steps);
    const double best = *std::min_element(steps.begin(), steps.end());
    const double bandwidth = bench::Median(r.bandwidths);
    const double best_bandwidth = *std::max_element(r.bandwidths.begin(), r.bandwidths.end());
    // Bytes read per token: every weight except the embedding table (one row
    // is gathered) plus the K/V of the context.
    const double weight_bytes = static_cast<double>(lm.decode_weight_bytes());
    const double kv_bytes = static_cast<double>(r.seqs->pool_bytes_per_position()) * (prompt + decode_tokens / 2);
    const double bytes = weight_bytes + kv_bytes;
    std::printf("\n[%s] decode: %.1f ms/token median (min %.1f, max %.1f) = %.1f tokens/s", name.c_str(), median * 1e3,
                best * 1e3, *std::max_element(steps.begin(), steps.end()) * 1e3, 1.0 / median);
    if (&r != &runs[0]) std::printf(" = %.2fx [%s]'s", bench::Median(runs[0].steps) / median, runs[0].name.c_str());
    std::printf("\n");
    std::printf(
        "[%s] bytes/token %.0f MB (weights %.0f + KV %.0f); bandwidth between steps %.1f GB/s median "
        "(best %.1f)\n",
        name.c_str(), bytes / 1e6, weight_bytes / 1e6, kv_bytes / 1e6, bandwidth, best_bandwidth);
    std::printf(
        "[%s] bound %.1f ms/token: decode at %.0f%% of the bandwidth bound (medians; best step vs best "
        "probe: %.0f%%)\n",
        name.c_str(), bytes / (bandwidth * 1e9) * 1e3, 100.0 * bytes / (bandwidth * 1e9) / median,
        100.0 * bytes / (best_bandwidth * 1e9) / best);
    // The threads' imbalance: where it is large the step is slower than its
    // bytes alone explain (one thread then streams at ~half the bandwidth).
    std::printf(
        "[%s] the callers of %.0f hand-offs a token (products, attention, SwiGLU) waited %.2f ms/token (median) "
        "for the helper thread's chunks\n",
        name.c_str(), static_cast<double>(r.handed) / static_cast<double>(steps.size()), bench::Median(r.waits) * 1e3);
    std::printf("[%s] decode step fused (no libtorch op between the products): %lld of %lld layers\n", name.c_str(),
                static_cast<long long>(r.fused_layers),
                static_cast<long long>(steps.size()) * config.num_hidden_layers);
    std::printf("[%s] of which per-op overhead (same layers, tiny matrices): %.1f ms/token\n", name.c_str(),
                OverheadMsPerToken(precision));
    if (batch > 1) {
      // The same prompt length, `batch` sequences decoding together.
      Sequences many(lm, batch, prompt + decode_tokens + 1, r.seqs->dtype(), sampling);
      if (!many.ok() || !many.Prefill(embeds).ok()) return 1;
      std::vector<double> batched;
      for (int i = 0; i < decode_tokens; ++i) {
        const double t0 = bench::NowSeconds();
        if (!many.Step().ok()) return 1;
        batched.push_back(bench::NowSeconds() - t0);
      }
      const double step = bench::Median(batched);
      std::printf("[%s] batch %d: %.1f ms/step = %.1f tokens/s aggregate = %.2fx batch 1 (%.1f ms/token)\n",
                  name.c_str(), batch, step * 1e3, batch / step, (batch / step) / (1.0 / median), median * 1e3);
      // What this machine allows: a step reads the weights once (the
      // bandwidth bound) and multiplies them by `batch` rows (the matmul
      // peak of the compute dtype, measured now).
      const double peak = bench::MatmulPeak(precision.compute);
      const double flops =
          2.0 * batch * static_cast<double>(lm.num_parameters() - lm.module()->model->embed->weight.numel());
      const double floor_s = std::max(bytes / (bandwidth * 1e9), flops / peak);
      std::printf(
          "[%s] batch %d floor %.1f ms/step (weights %.1f ms at the bandwidth, %.1f GFLOP at the %s matmul "
          "peak %.0f GFLOP/s = %.1f ms): at most %.2fx batch 1's measured rate; achieved %.0f%% of the "
          "floor\n",
          name.c_str(), batch, floor_s * 1e3, bytes / (bandwidth * 1e9) * 1e3, flops / 1e9,
          c10::toString(precision.compute), peak / 1e9, flops / peak * 1e3, batch * median / floor_s,
          100.0 * floor_s / step);
    }
  }
  std::printf("peak RSS %.0f MiB\n", bench::PeakRssMiB());
  return 0;
}

}  // namespace
}  // namespace internvl::llm

int main(int argc, char** argv) { return internvl::llm::Run(argc, argv); }
