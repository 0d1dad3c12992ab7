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
// native bf16 matmuls); "bf16-compute" = bf16 weights and activations.
// --libtorch turns FastLinear (core/llm/gemv.h) off, for comparison.
// Usage: bench_decode [--threads=N] [--dtypes=bf16,fp32] [--decode=N] [--prompt=N] [--libtorch]
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
#include "bench/bench_util.h"
#include "absl/strings/str_split.h"
#include "bench/bench_bandwidth.h"
#include "core/config.h"
#include "core/llm/causal_lm.h"
#include "core/llm/gemv.h"
#include "core/llm/sampler.h"
#include "core/nn/torch_util.h"

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
  auto cache = (*lm)->NewCache(1, 256);
  if (!cache.ok()) return -1;
  if (!(*lm)->Forward(at::randn({1, 8, c.hidden_size}), cache->get()).ok()) return -1;
  std::vector<double> steps;
  at::Tensor next = at::zeros({1, 1}, at::kLong);
  for (int i = 0; i < 200; ++i) {
    const double t0 = bench::NowSeconds();
    auto e = (*lm)->Embed(next);
    auto l = (*lm)->Forward(*e, cache->get());
    if (!l.ok()) return -1;
    next.fill_(l->argmax(-1).item<int64_t>());
    steps.push_back(bench::NowSeconds() - t0);
  }
  return bench::Median(steps) * 1e3;
}

absl::StatusOr<Precision> ParsePrecision(const std::string& name) {
  if (name == "bf16-compute") return Precision::Uniform(at::kBFloat16);
  auto dtype = ParseComputeDType(name);
  if (!dtype.ok()) return dtype.status();
  return Precision::ForRequested(*dtype);
}

int Run(int argc, char** argv) {
  int threads = 2, decode_tokens = 32, prompt = 5 * 256 + 40;
  bool libtorch = false;
  std::vector<std::string> dtypes = {"bf16", "fp32"};
  for (int i = 1; i < argc; ++i) {
    absl::string_view a = argv[i];
    auto value = [&](absl::string_view flag) -> std::string {
      return std::string(a.substr(flag.size()));
    };
    if (absl::StartsWith(a, "--threads=")) {
      (void)absl::SimpleAtoi(value("--threads="), &threads);
    } else if (absl::StartsWith(a, "--decode=")) {
      (void)absl::SimpleAtoi(value("--decode="), &decode_tokens);
    } else if (absl::StartsWith(a, "--prompt=")) {
      (void)absl::SimpleAtoi(value("--prompt="), &prompt);
    } else if (absl::StartsWith(a, "--dtypes=")) {
      dtypes = absl::StrSplit(value("--dtypes="), ',');
    } else if (a == "--libtorch") {
      libtorch = true;
    } else {
      std::fprintf(stderr,
                   "usage: %s [--threads=N] [--dtypes=bf16,fp32,bf16-compute] [--decode=N] [--prompt=N] "
                   "[--libtorch]\n",
                   argv[0]);
      return 2;
    }
  }
  if (decode_tokens < 1 || prompt < 1) return 2;
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // progress visible through pipes
  SetTorchThreads(threads);
  SetFastLinearEnabled(!libtorch);
  at::InferenceMode inference;
  const LlmConfig config = InternVL2_1BConfig();
  bench::BandwidthProbe probe;
  std::printf("threads %d, linear layers: %s, memory read bandwidth %.1f GB/s (best of 5 probes)\n", TorchThreads(),
              libtorch ? "libtorch" : FastLinearKernel(), probe.Best(5));

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
    std::printf("\n[%s] weights %s, compute %s: %.1fM parameters, %.0f MB, built in %.1f s\n", name.c_str(),
                c10::toString(precision->weights), c10::toString(precision->compute),
                (*lm)->num_parameters() / 1e6, (*lm)->parameter_bytes() / 1e6, bench::NowSeconds() - t0);
    auto cache = (*lm)->NewCache(1, prompt + decode_tokens + 1);
    if (!cache.ok()) return 1;
    const at::Tensor embeds = at::randn({1, prompt, config.hidden_size}).mul_(0.02);
    const at::Tensor warm = embeds.narrow(1, 0, std::min(prompt, 32));

    // Warm-up (oneDNN primitive creation, allocator), then one timed prefill.
    if (auto s = (*lm)->Forward(warm, cache->get()); !s.ok()) return 1;
    (*cache)->Reset();
    t0 = bench::NowSeconds();
    auto logits = (*lm)->Forward(embeds, cache->get());
    const double prefill_s = bench::NowSeconds() - t0;
    if (!logits.ok()) {
      std::fprintf(stderr, "%s\n", logits.status().ToString().c_str());
      return 1;
    }
    std::printf("[%s] prefill %d tokens: %.0f ms (%.0f tokens/s)\n", name.c_str(), prompt, prefill_s * 1e3,
                prompt / prefill_s);

    // Decode: greedy feed-back as Generate does it, timing each step
    // (embedding + forward + sampler), with a bandwidth probe after each so
    // that both see the same neighbours.
    auto sampler = Sampler::Create(SamplingParams{});
    if (!sampler.ok()) return 1;
    std::vector<double> steps, bandwidths;
    at::Tensor next = at::empty({1, 1}, at::kLong);
    auto first = sampler->Next(*logits, {{}});
    if (!first.ok()) return 1;
    next.fill_((*first)[0]);
    for (int i = 0; i < decode_tokens; ++i) {
      t0 = bench::NowSeconds();
      auto e = (*lm)->Embed(next);
      auto l = (*lm)->Forward(*e, cache->get());
      if (!l.ok()) return 1;
      auto id = sampler->Next(*l, {{}});
      if (!id.ok()) return 1;
      next.fill_((*id)[0]);
      steps.push_back(bench::NowSeconds() - t0);
      bandwidths.push_back(probe.Measure());
    }
    const double median = bench::Median(steps);
    const double best = *std::min_element(steps.begin(), steps.end());
    const double bandwidth = bench::Median(bandwidths);
    const double best_bandwidth = *std::max_element(bandwidths.begin(), bandwidths.end());
    // Bytes read per token: every weight except the embedding table (one row
    // is gathered) plus the K/V of the context.
    const double weight_bytes = static_cast<double>((*lm)->decode_weight_bytes());
    const double kv_bytes = static_cast<double>((*cache)->nbytes()) * (prompt + decode_tokens / 2) /
                            (*cache)->max_len();
    const double bytes = weight_bytes + kv_bytes;
    std::printf("[%s] decode: %.1f ms/token median (min %.1f, max %.1f) = %.1f tokens/s\n", name.c_str(),
                median * 1e3, best * 1e3, *std::max_element(steps.begin(), steps.end()) * 1e3, 1.0 / median);
    std::printf("[%s] bytes/token %.0f MB (weights %.0f + KV %.0f); bandwidth between steps %.1f GB/s median "
                "(best %.1f)\n",
                name.c_str(), bytes / 1e6, weight_bytes / 1e6, kv_bytes / 1e6, bandwidth, best_bandwidth);
    std::printf("[%s] bound %.1f ms/token: decode at %.0f%% of the bandwidth bound (medians; best step vs best "
                "probe: %.0f%%)\n",
                name.c_str(), bytes / (bandwidth * 1e9) * 1e3, 100.0 * bytes / (bandwidth * 1e9) / median,
                100.0 * bytes / (best_bandwidth * 1e9) / best);
    std::printf("[%s] of which per-op overhead (same layers, tiny matrices): %.1f ms/token\n", name.c_str(),
                OverheadMsPerToken(*precision));
    std::printf("[%s] peak RSS so far %.0f MiB\n", name.c_str(), bench::PeakRssMiB());
  }
  return 0;
}

}  // namespace
}  // namespace internvl::llm

int main(int argc, char** argv) { return internvl::llm::Run(argc, argv); }
