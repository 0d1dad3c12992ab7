// Time to first token and decode speed of the whole in-process pipeline
// (ChatPipeline: preprocess -> vision -> prompt -> LLM prefill -> decode) for
// `make-model --like InternVL2-1B` (random weights, the real shapes, bf16 as
// the published checkpoint), chatting about one 1920x1080 JPEG with up to
// --max-num tiles (12, as the model card's demo) and a short question:
//   - TTFT, split into preprocess, vision, prefill and the rest (template,
//     tokenizer, embeddings),
//   - decode tokens/s at batch 1,
//   - peak RSS (getrusage ru_maxrss; make-model runs in a child process so
//     that only the pipeline counts),
//   - the same run's memory read bandwidth (bench_bandwidth.h, probed just
//     before and after the chat) and "decode at X% of the bandwidth bound",
//     bytes per token = the LLM weights one decode step reads (all but the
//     embedding table, in their storage dtype) + the KV cache.
// Usage: bench_ttft [--max-num=12] [--decode=64] [--threads=2] [--dtype=bf16]
//                   [--model=DIR (skip make-model)] [--tokenizer=DIR] [--keep]
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "bench/bench_util.h"
#include "bench/bench_bandwidth.h"
#include "core/chat/chat_pipeline.h"
#include "core/config.h"
#include "core/llm/causal_lm.h"
#include "core/modelgen/make_model.h"
#include "core/nn/torch_util.h"
#include "core/safetensors.h"
#include "core/status.h"

namespace internvl {
namespace {

// Resident set now (VmRSS), MiB.
double CurrentRssMiB() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  if (f == nullptr) return -1;
  long pages = 0, resident = 0;
  const int n = std::fscanf(f, "%ld %ld", &pages, &resident);
  std::fclose(f);
  return n == 2 ? resident * (sysconf(_SC_PAGESIZE) / 1024.0) / 1024.0 : -1;
}

// A 1920x1080 photo-like JPEG: gradients, shapes and text, so that the codec
// and the resize see real content.
std::string MakeImage() {
  constexpr int kWidth = 1920, kHeight = 1080;
  cv::Mat img(kHeight, kWidth, CV_8UC3);
  for (int y = 0; y < kHeight; ++y) {
    for (int x = 0; x < kWidth; ++x) {
      img.at<cv::Vec3b>(y, x) = cv::Vec3b(static_cast<uchar>(255 * x / kWidth), static_cast<uchar>(255 * y / kHeight),
                                          static_cast<uchar>((x ^ y) & 255));
    }
  }
  cv::circle(img, {1500, 250}, 160, {40, 200, 255}, cv::FILLED, cv::LINE_AA);
  cv::rectangle(img, {400, 500}, {1100, 1000}, {120, 160, 200}, cv::FILLED);
  cv::putText(img, "InternVL TTFT benchmark", {80, 160}, cv::FONT_HERSHEY_SIMPLEX, 3.0, {255, 255, 255}, 5,
              cv::LINE_AA);
  std::vector<uchar> jpeg;
  cv::imencode(".jpg", img, jpeg, {cv::IMWRITE_JPEG_QUALITY, 90});
  return std::string(jpeg.begin(), jpeg.end());
}

// make-model in a child process: its buffers do not count in our peak RSS.
bool MakeModelInChild(const modelgen::MakeModelOptions& options) {
  const pid_t pid = fork();
  if (pid < 0) return false;
  if (pid == 0) {
    auto summary = modelgen::MakeModel(options);
    if (!summary.ok()) {
      std::fprintf(stderr, "make-model: %s\n", summary.status().ToString().c_str());
      _exit(1);
    }
    std::printf("make-model --like %s: %.0fM parameters, %.0f MB in %.1f s (%s)\n", options.like.c_str(),
                summary->params / 1e6, summary->bytes / 1e6, summary->seconds, summary->tokenizer.c_str());
    std::fflush(stdout);
    _exit(0);
  }
  int status = 0;
  if (waitpid(pid, &status, 0) != pid) return false;
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

// Bytes one decode step reads from the LLM weights, as the pipeline stores
// them: matrices in the weight dtype, norms and biases in the compute dtype,
// the embedding table not at all (one row is gathered).
absl::StatusOr<double> DecodeWeightBytes(const std::string& dir, const llm::Precision& precision) {
  INTERNVL_ASSIGN_OR_RETURN(auto store, TensorStore::OpenDir(dir));
  const double weight_size = precision.weights == at::kBFloat16 ? 2 : 4;
  const double compute_size = precision.compute == at::kBFloat16 ? 2 : 4;
  double bytes = 0;
  for (const std::string& name : store->Names()) {
    if (!absl::StartsWith(name, "language_model.") || absl::StrContains(name, "embed_tokens") ||
        absl::StrContains(name, "tok_embeddings")) {
      continue;
    }
    const TensorView* view = store->Find(name);
    double numel = 1;
    for (int64_t d : view->shape) numel *= static_cast<double>(d);
    bytes += numel * (view->shape.size() >= 2 ? weight_size : compute_size);
  }
  return bytes;
}

int Run(int argc, char** argv) {
  int max_num = 12, decode = 64, threads = 2;
  std::string dtype = "bf16", model_dir, tokenizer_dir;
  bool keep = false;
  for (int i = 1; i < argc; ++i) {
    absl::string_view a = argv[i];
    auto value = [&](absl::string_view flag) { return std::string(a.substr(flag.size())); };
    bool ok = true;
    if (absl::StartsWith(a, "--max-num=")) {
      ok = absl::SimpleAtoi(value("--max-num="), &max_num);
    } else if (absl::StartsWith(a, "--decode=")) {
      ok = absl::SimpleAtoi(value("--decode="), &decode);
    } else if (absl::StartsWith(a, "--threads=")) {
      ok = absl::SimpleAtoi(value("--threads="), &threads);
    } else if (absl::StartsWith(a, "--dtype=")) {
      dtype = value("--dtype=");
    } else if (absl::StartsWith(a, "--model=")) {
      model_dir = value("--model=");
    } else if (absl::StartsWith(a, "--tokenizer=")) {
      tokenizer_dir = value("--tokenizer=");
    } else if (a == "--keep") {
      keep = true;
    } else {
      ok = false;
    }
    if (!ok || max_num < 1 || decode < 2) {
      std::fprintf(stderr,
                   "usage: %s [--max-num=12] [--decode=64] [--threads=2] [--dtype=bf16|fp32] [--model=DIR] "
                   "[--tokenizer=DIR] [--keep]\n",
                   argv[0]);
      return 2;
    }
  }
  std::setvbuf(stdout, nullptr, _IOLBF, 0);

  bool made = false;
  if (model_dir.empty()) {
    const char* tmp = std::getenv("TMPDIR");
    std::string templ = std::string(tmp != nullptr ? tmp : "/tmp") + "/bench_ttft.XXXXXX";
    if (mkdtemp(templ.data()) == nullptr) {
      std::perror("mkdtemp");
      return 1;
    }
    model_dir = templ + "/InternVL2-1B";
    modelgen::MakeModelOptions mo;
    mo.like = "InternVL2-1B";
    mo.out_dir = model_dir;
    mo.seed = 1;
    mo.dtype = DType::kBF16;
    mo.threads = threads;
    if (!tokenizer_dir.empty()) mo.tokenizer_dir = tokenizer_dir;
    if (!MakeModelInChild(mo)) {
      std::fprintf(stderr, "make-model failed\n");
      return 1;
    }
    made = true;
  }
  auto cleanup = [&] {
    if (made && !keep) std::filesystem::remove_all(std::filesystem::path(model_dir).parent_path());
    if (made && keep) std::printf("model kept in %s\n", model_dir.c_str());
  };

  double t0 = bench::NowSeconds();
  auto pipeline = ChatPipeline::Load(model_dir, PipelineOptions::Of(dtype, threads));
  if (!pipeline.ok()) {
    std::fprintf(stderr, "%s\n", pipeline.status().ToString().c_str());
    cleanup();
    return 1;
  }
  const double load_s = bench::NowSeconds() - t0;
  auto requested = ParseComputeDType(dtype);
  const llm::Precision precision = llm::Precision::ForRequested(*requested);
  auto weight_bytes = DecodeWeightBytes(model_dir, precision);
  if (!weight_bytes.ok()) {
    std::fprintf(stderr, "%s\n", weight_bytes.status().ToString().c_str());
    cleanup();
    return 1;
  }
  std::printf("pipeline loaded in %.1f s: --dtype %s = LLM weights %s, computed in %s; %d threads; RSS %.0f MiB\n",
              load_s, dtype.c_str(), c10::toString(precision.weights), c10::toString(precision.compute), TorchThreads(),
              CurrentRssMiB());

  // Warm-up: a short text-only chat (allocator, oneDNN/BLAS first calls).
  ChatRequest warm;
  warm.question = "Hello";
  warm.generation.max_new_tokens = 2;
  if (auto w = (*pipeline)->Chat(warm); !w.ok()) {
    std::fprintf(stderr, "%s\n", w.status().ToString().c_str());
    cleanup();
    return 1;
  }

  bench::BandwidthProbe probe;
  std::vector<double> bandwidths;
  probe.Measure();
  for (int i = 0; i < 5; ++i) bandwidths.push_back(probe.Measure());

  ChatRequest request;
  request.images = {MakeImage()};
  request.question = "Please describe the image in detail.";
  request.max_num = max_num;
  request.generation.max_new_tokens = decode;
  auto result = (*pipeline)->Chat(request);
  for (int i = 0; i < 5; ++i) bandwidths.push_back(probe.Measure());
  if (!result.ok()) {
    std::fprintf(stderr, "%s\n", result.status().ToString().c_str());
    cleanup();
    return 1;
  }

  const ChatTimings& t = result->timings;
  const double ttft_ms = t.total_ms - t.decode_ms;
  const double other_ms = ttft_ms - t.preprocess_ms - t.vision_ms - t.prefill_ms;
  const int tokens = static_cast<int>(result->token_ids.size());
  std::printf("\nimage 1920x1080, max_num %d -> %d tiles (thumbnail included), prompt %d tokens\n", max_num,
              result->num_tiles, result->prompt_tokens);
  std::printf("time to first token: %.0f ms = preprocess %.0f + vision %.0f (%.0f ms/tile) + prefill %.0f "
              "(%.0f tokens/s) + template/tokenizer/embeddings %.0f\n",
              ttft_ms, t.preprocess_ms, t.vision_ms, t.vision_ms / std::max(1, result->num_tiles), t.prefill_ms,
              result->prompt_tokens / (t.prefill_ms / 1e3), other_ms);
  if (tokens < 2) {
    std::printf("decode: the model stopped after %d token(s); no decode speed\n", tokens);
  } else {
    // decode_ms runs from the end of the prefill to the last token: tokens - 1
    // forward passes and every sampling step.
    const double ms_per_token = t.decode_ms / (tokens - 1);
    const double bandwidth = bench::Median(bandwidths);
    const int64_t kv_per_token = 2LL * (*pipeline)->config().llm.num_hidden_layers *
                                 (*pipeline)->config().llm.num_key_value_heads *
                                 (*pipeline)->config().llm.head_dim() * (precision.compute == at::kBFloat16 ? 2 : 4);
    const double kv_bytes = static_cast<double>(kv_per_token) * (result->prompt_tokens + tokens / 2);
    const double bytes = *weight_bytes + kv_bytes;
    const double bound_ms = bytes / (bandwidth * 1e9) * 1e3;
    std::printf("decode at batch 1: %d tokens (%s), %.1f ms/token = %.2f tokens/s\n", tokens,
                FinishReasonName(result->finish_reason), ms_per_token, 1e3 / ms_per_token);
    std::printf("bytes/token %.0f MB (LLM weights %.0f + KV %.0f); memory read bandwidth %.1f GB/s (median of %zu "
                "probes around the chat) -> bound %.1f ms/token: decode at %.0f%% of the bandwidth bound\n",
                bytes / 1e6, *weight_bytes / 1e6, kv_bytes / 1e6, bandwidth, bandwidths.size(), bound_ms,
                100.0 * bound_ms / ms_per_token);
  }
  std::printf("peak RSS %.0f MiB (loading included); RSS after the chat %.0f MiB\n", bench::PeakRssMiB(), CurrentRssMiB());
  cleanup();
  return 0;
}

}  // namespace
}  // namespace internvl

int main(int argc, char** argv) { return internvl::Run(argc, argv); }
