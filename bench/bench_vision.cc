// InternViT-300M-sized vision path (random weights, real shapes: 24 layers,
// width 1024, 16 heads, MLP 4096, 448px tiles, projector to 896 = InternVL2-1B)
// in bf16 and fp32: ms per tile, printed beside the same run's measured matmul
// peak as a ratio ("runs at X% of the matmul peak").
//
//   bench_vision [--threads N] [--tiles N] [--fp32-tiles N]
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "bench/bench_bandwidth.h"  // Median
#include "bench/bench_matmul.h"
#include "bench/bench_util.h"
#include "core/config.h"
#include "core/nn/attention.h"
#include "core/nn/device.h"
#include "core/nn/softmax.h"
#include "core/nn/torch_util.h"
#include "core/vision/intern_vit.h"
#include "core/vision/vision_model.h"
#include "core/vision/vision_model_torch.h"

namespace internvl {
namespace {

InternVLConfig Vit300mConfig() {
  auto c = ParseInternVLConfig(R"({
    "template": "Hermes-2", "ps_version": "v2", "force_image_size": 448, "downsample_ratio": 0.5,
    "dynamic_image_size": true, "use_thumbnail": true, "max_dynamic_patch": 12,
    "vision_config": {"hidden_size": 1024, "num_attention_heads": 16, "intermediate_size": 4096,
      "num_hidden_layers": 24, "norm_type": "layer_norm", "qkv_bias": true, "qk_normalization": false,
      "image_size": 448, "patch_size": 14, "layer_norm_eps": 1e-6},
    "llm_config": {"architectures": ["Qwen2ForCausalLM"], "hidden_size": 896, "num_attention_heads": 14,
      "num_key_value_heads": 2, "intermediate_size": 4864, "num_hidden_layers": 24, "vocab_size": 151655}})");
  if (!c.ok()) {
    std::fprintf(stderr, "%s\n", std::string(c.status().message()).c_str());
    std::exit(1);
  }
  return *c;
}

// Writes random bf16 weights with the real key names and shapes.
std::string WriteRandomVisionCheckpoint(const InternVLConfig& c) {
  namespace fs = std::filesystem;
  std::string dir = (fs::temp_directory_path() / ("bench_vision_" + std::to_string(::getpid()))).string();
  fs::create_directories(dir);
  at::manual_seed(0);
  auto rnd = [](std::vector<int64_t> shape, double std) { return (at::randn(shape) * std).to(at::kBFloat16); };
  const int64_t C = c.vision.hidden_size, I = c.vision.intermediate_size, H = c.llm.hidden_size;
  SafetensorsWriter w;
  w.Add("vision_model.embeddings.class_embedding", rnd({1, 1, C}, 0.02));
  w.Add("vision_model.embeddings.patch_embedding.weight", rnd({C, 3, 14, 14}, 0.02));
  w.Add("vision_model.embeddings.patch_embedding.bias", rnd({C}, 0.02));
  w.Add("vision_model.embeddings.position_embedding", rnd({1, 1025, C}, 0.02));
  for (int l = 0; l < c.vision.num_hidden_layers; ++l) {
    std::string p = "vision_model.encoder.layers." + std::to_string(l) + ".";
    w.Add(p + "attn.qkv.weight", rnd({3 * C, C}, 0.02));
    w.Add(p + "attn.qkv.bias", rnd({3 * C}, 0.02));
    w.Add(p + "attn.proj.weight", rnd({C, C}, 0.02));
    w.Add(p + "attn.proj.bias", rnd({C}, 0.02));
    w.Add(p + "mlp.fc1.weight", rnd({I, C}, 0.02));
    w.Add(p + "mlp.fc1.bias", rnd({I}, 0.02));
    w.Add(p + "mlp.fc2.weight", rnd({C, I}, 0.02));
    w.Add(p + "mlp.fc2.bias", rnd({C}, 0.02));
    w.Add(p + "norm1.weight", at::ones({C}).to(at::kBFloat16));
    w.Add(p + "norm1.bias", at::zeros({C}).to(at::kBFloat16));
    w.Add(p + "norm2.weight", at::ones({C}).to(at::kBFloat16));
    w.Add(p + "norm2.bias", at::zeros({C}).to(at::kBFloat16));
    w.Add(p + "ls1", (at::ones({C}) * 0.1).to(at::kBFloat16));
    w.Add(p + "ls2", (at::ones({C}) * 0.1).to(at::kBFloat16));
  }
  w.Add("mlp1.0.weight", at::ones({4 * C}).to(at::kBFloat16));
  w.Add("mlp1.0.bias", at::zeros({4 * C}).to(at::kBFloat16));
  w.Add("mlp1.1.weight", rnd({H, 4 * C}, 0.02));
  w.Add("mlp1.1.bias", rnd({H}, 0.02));
  w.Add("mlp1.3.weight", rnd({H, H}, 0.02));
  w.Add("mlp1.3.bias", rnd({H}, 0.02));
  auto s = w.Write(dir + "/model.safetensors");
  if (!s.ok()) {
    std::fprintf(stderr, "%s\n", std::string(s.message()).c_str());
    std::exit(1);
  }
  return dir;
}

double FlopsPerTile(const InternVLConfig& c) {
  const double N = 1025, C = c.vision.hidden_size, I = c.vision.intermediate_size, H = c.llm.hidden_size;
  const double per_layer = 2 * N * (3 * C * C + C * C + 2 * C * I) + 2 * 2 * N * N * C;
  const double patch = 2.0 * 1024 * C * 3 * 14 * 14;
  const double proj = 2.0 * 256 * (4 * C * H + H * H);
  return per_layer * c.vision.num_hidden_layers + patch + proj;
}

int Main(int argc, char** argv) {
  int threads = 0, tiles = 4, fp32_tiles = 1;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string f = argv[i];
    if (f == "--threads")
      threads = std::atoi(argv[i + 1]);
    else if (f == "--tiles")
      tiles = std::atoi(argv[i + 1]);
    else if (f == "--fp32-tiles")
      fp32_tiles = std::atoi(argv[i + 1]);
  }
  SetTorchThreads(threads);
  at::InferenceMode guard;
  const InternVLConfig config = Vit300mConfig();
  const double flops = FlopsPerTile(config);
  std::printf(
      "InternViT-300M + mlp1 (InternVL2-1B shapes), %d threads, fp32 matmuls: %s, bf16 attention: %s, %.1f GFLOP per "
      "tile\n",
      TorchThreads(), BlasThreading().c_str(), AttentionKernelName(), flops / 1e9);
  const std::string dir = WriteRandomVisionCheckpoint(config);
  auto store = TensorStore::OpenDir(dir);
  if (!store.ok()) return 1;
  for (const char* dtype : {"bf16", "fp32"}) {
    const bool bf16 = std::string(dtype) == "bf16";
    const int n = bf16 ? tiles : fp32_tiles;
    if (n <= 0) continue;
    auto model = VisionModel::Load(config, **store, VisionOptions{.dtype = dtype, .tile_batch = 4});
    if (!model.ok()) {
      std::fprintf(stderr, "%s\n", std::string(model.status().message()).c_str());
      return 1;
    }
    // The peak of the dtype actually computed in (bf16 degrades to fp32 on
    // CPUs without native bf16 matmul).
    const at::ScalarType compute = EffectiveComputeDType(bf16 ? at::kBFloat16 : at::kFloat);
    // (Probed before and after the forward, the higher kept: on this shared
    // VM one probe in a few reads half the peak, which would flatter the
    // ratio.)
    double peak = bench::MatmulPeak(compute, 2048);
    at::Tensor px = at::randn({n, 3, 448, 448});
    const long faults = bench::MinorFaults();
    double t = bench::BestOf(1, [&] {
      auto out = ExtractFeature(**model, px);
      if (!out.ok()) std::exit(1);
    });
    peak = std::max(peak, bench::MatmulPeak(compute, 2048));
    const double per_tile = t / n;
    const double achieved = flops / per_tile;
    // Fresh pages the forward touched (each zeroed by the kernel): temporaries
    // over glibc's 32 MB mmap threshold would show here, layer after layer.
    const double faults_per_tile = static_cast<double>(bench::MinorFaults() - faults) / std::max(n, 1);
    std::printf(
        "%s (computed in %s): %.0f ms/tile (%d tiles) | %.0f GFLOP/s achieved vs %s matmul peak %.0f GFLOP/s"
        " (2048^3, best of probes before and after, same run) = %.0f%% of peak; bound at peak %.0f ms/tile; %.0f page "
        "faults per tile\n",
        dtype, c10::toString(compute), per_tile * 1e3, n, achieved / 1e9, c10::toString(compute), peak / 1e9,
        100 * achieved / peak, flops / peak * 1e3, faults_per_tile);
  }
  {
    // The attention's softmax over one tile's scores (16 heads of [1025,
    // 1025], in groups of 3 heads): libtorch's op (a new tensor, as before)
    // against ours in place, interleaved; fp32 (SoftmaxLastDimFp32), and bf16
    // (SoftmaxLastDimBf16: computed in fp32, rounded once) where the CPU
    // computes bf16 natively.
    const auto median_ms = [](const at::Tensor& scores, at::Tensor (*ours_fn)(const at::Tensor&)) {
      std::vector<double> times[2];
      for (int r = 0; r < 15; ++r) {
        for (int ours = 0; ours < 2; ++ours) {
          at::Tensor s = scores.clone();
          const double t0 = bench::NowSeconds();
          s = ours ? ours_fn(s) : s.softmax(-1);
          times[ours].push_back((bench::NowSeconds() - t0) * 16 / 3);
        }
      }
      return std::pair(bench::Median(times[0]) * 1e3, bench::Median(times[1]) * 1e3);
    };
    const at::Tensor scores = at::randn({3, 1025, 1025}) * 3;
    const auto [lib, ours] = median_ms(scores, SoftmaxLastDimFp32);
    std::printf("attention softmax of one tile (16 x [1025, 1025] fp32, median of 15): libtorch %.1f ms, %s %.1f ms\n",
                lib,
                SoftmaxRunsInPlace(scores) ? (std::string("ours in place (") + SoftmaxKernelName() + ")").c_str()
                                           : "ours (libtorch's op here)",
                ours);
    if (EffectiveComputeDType(at::kBFloat16) == at::kBFloat16) {
      const auto [lib16, ours16] = median_ms(scores.to(at::kBFloat16), SoftmaxLastDimBf16);
      std::printf("the same in bf16: libtorch %.1f ms, ours %.1f ms\n", lib16, ours16);
    }
  }
  {
    // One tile's attention (fp32, as computed here without native bf16):
    // the (tile, head) pairs on the threads in blocks of 64 query rows (the
    // default) against the reference's order (a group of heads' whole
    // [N, N] scores, each product on all threads), interleaved.
    VisionAttention attention(config.vision);
    const at::Tensor x = at::randn({1, 1025, config.vision.hidden_size});
    std::vector<double> times[2];
    for (int r = 0; r < 15; ++r) {
      for (int order = 0; order < 2; ++order) {
        attention->query_block = order == 0 ? 64 : 0;
        const double t0 = bench::NowSeconds();
        const at::Tensor y = attention->forward(x);
        times[order].push_back(bench::NowSeconds() - t0);
      }
    }
    std::printf(
        "attention of one tile incl. qkv/proj (fp32, median of 15): query blocks per head %.1f ms, "
        "whole scores %.1f ms\n",
        bench::Median(times[0]) * 1e3, bench::Median(times[1]) * 1e3);
  }
  if (EffectiveComputeDType(at::kBFloat16) == at::kBFloat16 && CpuHasAvx512Bf16()) {
    // The bf16 attention of 3 tiles (a layer's batch at the default
    // max_temp_bytes), qkv and proj included: the fused kernel against the op
    // chain, interleaved.
    VisionAttention attention(config.vision);
    attention->to(at::kBFloat16);
    const at::Tensor x = at::randn({3, 1025, config.vision.hidden_size}).to(at::kBFloat16);
    std::vector<double> times[2];
    for (int r = 0; r < 9; ++r) {
      for (int fused = 0; fused < 2; ++fused) {
        ForceFusedAttention(fused);
        const double t0 = bench::NowSeconds();
        const at::Tensor y = attention->forward(x);
        times[fused].push_back(bench::NowSeconds() - t0);
      }
    }
    ForceFusedAttention(-1);
    std::printf(
        "bf16 attention of 3 tiles incl. qkv/proj (median of 9, per tile): fused (avx512bf16) %.1f ms, op chain %.1f "
        "ms\n",
        bench::Median(times[1]) * 1e3 / 3, bench::Median(times[0]) * 1e3 / 3);
  }
  std::printf("peak RSS %.0f MiB\n", bench::PeakRssMiB());
  std::filesystem::remove_all(dir);
  return 0;
}

}  // namespace
}  // namespace internvl

int main(int argc, char** argv) { return internvl::Main(argc, argv); }
