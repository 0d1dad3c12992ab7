// LLM decode benchmark: an InternVL2-1B-sized decoder (Qwen2-0.5B shapes)
// with random weights built in memory, batch 1:
//   - prefill of ~1300 tokens (5 tiles x 256 image tokens + text),
//   - decode ms/token and tokens/s,
//   - the same run's memory read bandwidth, and decode speed as a fraction of
//     the bandwidth bound (bytes of weights + KV read per token / bandwidth),
//   - peak RSS.
// Usage: bench_decode [--threads=N] [--dtypes=bf16,fp32] [--decode=N] [--prompt=N]
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
#include "absl/strings/str_split.h"
#include "core/config.h"
#include "core/llm/causal_lm.h"
#include "core/nn/torch_util.h"

namespace internvl::llm {
namespace {

double Now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

double PeakRssMiB() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss / 1024.0;
}

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

// Read bandwidth (GB/s) as the decode step sees it: libtorch reductions over
// a 1 GiB buffer with the same thread count, best of 5.
double MeasureBandwidthGBs() {
  constexpr int64_t kBytes = int64_t{1} << 30;
  at::Tensor buf = at::ones({kBytes / 4}, at::kFloat);
  double best = 1e30;
  for (int i = 0; i < 6; ++i) {
    const double t0 = Now();
    at::Tensor s = buf.sum();
    (void)s.item<float>();
    if (i > 0) best = std::min(best, Now() - t0);
  }
  return kBytes / best / 1e9;
}

int Run(int argc, char** argv) {
  int threads = 2, decode_tokens = 32, prompt = 5 * 256 + 40;
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
    } else {
      std::fprintf(stderr, "usage: %s [--threads=N] [--dtypes=bf16,fp32] [--decode=N] [--prompt=N]\n", argv[0]);
      return 2;
    }
  }
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // progress visible through pipes
  SetTorchThreads(threads);
  at::InferenceMode inference;
  const LlmConfig config = InternVL2_1BConfig();
  const double bandwidth = MeasureBandwidthGBs();
  std::printf("threads %d, memory read bandwidth %.1f GB/s (1 GiB sum)\n", TorchThreads(), bandwidth);

  for (const std::string& name : dtypes) {
    auto dtype = ParseComputeDType(name);
    if (!dtype.ok()) {
      std::fprintf(stderr, "%s\n", dtype.status().ToString().c_str());
      return 2;
    }
    double t0 = Now();
    auto lm = CausalLM::CreateRandom(config, *dtype, /*seed=*/1);
    if (!lm.ok()) {
      std::fprintf(stderr, "%s\n", lm.status().ToString().c_str());
      return 1;
    }
    std::printf("\n[%s] %.1fM parameters, %.0f MB, built in %.1f s\n", name.c_str(),
                (*lm)->num_parameters() / 1e6, (*lm)->parameter_bytes() / 1e6, Now() - t0);
    auto cache = (*lm)->NewCache(1, prompt + decode_tokens + 1);
    if (!cache.ok()) return 1;
    const at::Tensor embeds = at::randn({1, prompt, config.hidden_size}).mul_(0.02);
    const at::Tensor warm = embeds.narrow(1, 0, 32);

    // Warm-up (oneDNN primitive creation, allocator), then one timed prefill.
    if (auto s = (*lm)->Forward(warm, cache->get()); !s.ok()) return 1;
    (*cache)->Reset();
    t0 = Now();
    auto logits = (*lm)->Forward(embeds, cache->get());
    const double prefill_s = Now() - t0;
    if (!logits.ok()) {
      std::fprintf(stderr, "%s\n", logits.status().ToString().c_str());
      return 1;
    }
    std::printf("[%s] prefill %d tokens: %.0f ms (%.0f tokens/s)\n", name.c_str(), prompt, prefill_s * 1e3,
                prompt / prefill_s);

    // Decode: greedy feed-back, timing each step (embedding + forward + argmax).
    std::vector<double> steps;
    at::Tensor next = logits->argmax(-1).view({1, 1});
    for (int i = 0; i < decode_tokens; ++i) {
      t0 = Now();
      auto e = (*lm)->Embed(next);
      auto l = (*lm)->Forward(*e, cache->get());
      if (!l.ok()) return 1;
      next = l->argmax(-1).view({1, 1});
      steps.push_back(Now() - t0);
    }
    std::sort(steps.begin(), steps.end());
    const double median = steps[steps.size() / 2];
    // Bytes read per token: every weight except the embedding table (one row
    // is gathered) plus the K/V of the context.
    const auto& emb = (*lm)->module()->model->embed->weight;
    const double weight_bytes = (*lm)->parameter_bytes() - emb.numel() * emb.element_size();
    const double kv_bytes = static_cast<double>((*cache)->nbytes()) * (prompt + decode_tokens / 2) /
                            (*cache)->max_len();
    const double bound_s = (weight_bytes + kv_bytes) / (bandwidth * 1e9);
    std::printf("[%s] decode: %.1f ms/token median (min %.1f, max %.1f) = %.1f tokens/s\n", name.c_str(),
                median * 1e3, steps.front() * 1e3, steps.back() * 1e3, 1.0 / median);
    std::printf("[%s] bytes/token %.0f MB -> bound %.1f ms/token at %.1f GB/s: decode at %.0f%% of the bandwidth "
                "bound\n",
                name.c_str(), (weight_bytes + kv_bytes) / 1e6, bound_s * 1e3, bandwidth, 100.0 * bound_s / median);
    std::printf("[%s] peak RSS so far %.0f MiB\n", name.c_str(), PeakRssMiB());
  }
  return 0;
}

}  // namespace
}  // namespace internvl::llm

int main(int argc, char** argv) { return internvl::llm::Run(argc, argv); }
