// bench_serving: many users at once on one engine, through the public API.
// `make-model --like InternVL2-1B` (random weights, the real shapes; bf16 by
// default), served by `internvl serve --all-in-one` and by the four-service
// path (preprocess, vision encoder + redis-server, decoder, gateway), real
// processes on loopback. For 1, 2, 4, 8 and 16 concurrent clients, each
// sending --requests chats in a row (a mix of text and image requests, every
// question and image distinct), it reports:
//   - aggregate generated tokens/s, and its ratio to the 1-client level of
//     the same run (target: 8 streams >= 5x one stream),
//   - p50 / p99 time to first token and inter-token latency, measured by the
//     clients from the streamed deltas,
//   - each server's peak RSS (VmHWM) against its RSS after loading (weights +
//     runtime) plus the KV budget (target: within 20%).
// Then a two-turn chat about a 1920x1080 JPEG at max_num 12 (13 tiles): the
// second turn resends the image and the first answer; its time to first
// token against the first turn's (target: >= 10x lower).
//
// Usage: bench_serving [--model=DIR] [--dtype=bf16] [--quantize=none|int8|int4] [--threads=2]
//   [--clients=1,2,4,8,16] [--requests=3] [--max-new-tokens=48]
//   [--image-every=3 (0 = text only)] [--image-max-num=1]
//   [--paths=all-in-one,services] [--kv-cache-bytes=1073741824]
//   [--max-batched-tokens=512] [--max-num-seqs=32] [--turn-max-num=12]
//   [--keep (keep the generated model)]
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "bench/bench_util.h"
#include "core/modelgen/make_model.h"
#include "gateway/client.h"
#include "services/common/testing/harness.h"
#include "services/common/testing/redis_server.h"

namespace internvl {
namespace {

namespace st = services::testing;

struct Options {
  std::string model, dtype = "bf16", tokenizer, quantize = "none";
  int threads = 2;
  std::vector<int> clients = {1, 2, 4, 8, 16};
  int requests = 3;
  int max_new_tokens = 48;
  int image_every = 3;
  int image_max_num = 1;
  std::vector<std::string> paths = {"all-in-one", "services"};
  int64_t kv_cache_bytes = int64_t{1} << 30;
  int max_batched_tokens = 512;
  int max_num_seqs = 32;
  int turn_max_num = 12;
  bool keep = false;
};

struct Proc : st::ServerProcess {
  std::string name;
  double loaded_rss_mib = 0;
};

// VmRSS or VmHWM of a process, MiB.
double ProcMiB(pid_t pid, const char* field) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (absl::StartsWith(line, field)) {
      double kb = 0;
      std::vector<std::string> parts = absl::StrSplit(line, ' ', absl::SkipEmpty());
      if (parts.size() >= 2 && absl::SimpleAtod(parts[1], &kb)) return kb / 1024;
    }
  }
  return -1;
}

Proc Spawn(const std::string& name, const std::string& bin, std::vector<std::string> args, const std::string& log) {
  auto s = st::SpawnServer(bin, std::move(args), log);
  if (!s.ok()) {
    std::fprintf(stderr, "%s: %s\n", name.c_str(), s.status().ToString().c_str());
    std::exit(1);
  }
  Proc p;
  static_cast<st::ServerProcess&>(p) = std::move(*s);
  p.name = name;
  return p;
}

void WaitServing(Proc& p, const std::string& service) {
  const absl::Status s = st::WaitForServing(p.target(), service, p.process.get(), absl::Minutes(10));
  if (!s.ok()) {
    std::fprintf(stderr, "%s did not start: %s\n%s\n", p.name.c_str(), s.ToString().c_str(),
                 p.process->ReadLog().c_str());
    std::exit(1);
  }
  p.loaded_rss_mib = ProcMiB(p.process->pid(), "VmRSS:");
}

// A photo-like image: gradients, shapes and text, seeded so that every
// request's image is different (no cache helps but the one intended).
std::string MakeImage(int width, int height, int seed) {
  cv::Mat img(height, width, CV_8UC3);
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      img.at<cv::Vec3b>(y, x) = cv::Vec3b(static_cast<uchar>(255 * x / width), static_cast<uchar>(255 * y / height),
                                          static_cast<uchar>(((x + seed * 37) ^ (y + seed * 11)) & 255));
    }
  }
  cv::circle(img, {width * (1 + seed % 3) / 4, height / 3}, height / 6, {40, 200, 255}, cv::FILLED, cv::LINE_AA);
  cv::putText(img, absl::StrCat("request ", seed), {width / 10, height * 2 / 3}, cv::FONT_HERSHEY_SIMPLEX,
              height / 300.0, {255, 255, 255}, 2, cv::LINE_AA);
  std::vector<uchar> jpeg;
  cv::imencode(".jpg", img, jpeg, {cv::IMWRITE_JPEG_QUALITY, 90});
  return std::string(jpeg.begin(), jpeg.end());
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5));
  return v[i];
}

struct Level {
  int clients = 0;
  double seconds = 0;
  int64_t tokens = 0;
  int requests = 0, errors = 0;
  std::vector<double> ttft, itl;
  double tokens_per_s() const { return seconds > 0 ? tokens / seconds : 0; }
};

Level RunLevel(const std::string& target, const Options& o, int clients, int* image_seed, int* question_seed) {
  Level level;
  level.clients = clients;
  std::mutex mu;
  // Requests decided up front (distinct questions and images).
  std::vector<std::vector<ChatRequest>> work(clients);
  for (int c = 0; c < clients; ++c) {
    for (int i = 0; i < o.requests; ++i) {
      ChatRequest r;
      const int q = (*question_seed)++;
      r.generation.max_new_tokens = o.max_new_tokens;
      if (o.image_every > 0 && (c + i) % o.image_every == 0) {
        r.question = absl::StrCat("Describe image number ", q, " in detail.");
        r.images = {MakeImage(640, 480, (*image_seed)++)};
        r.max_num = o.image_max_num;
      } else {
        r.question = absl::StrCat("Question ", q, ": write a short story about the number ", q * 7919 % 1000,
                                  " and a lighthouse.");
      }
      work[c].push_back(std::move(r));
    }
  }
  const double t0 = bench::NowSeconds();
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      gateway::ChatClient client(target);
      for (const ChatRequest& r : work[c]) {
        const double start = bench::NowSeconds();
        double last = -1;
        std::vector<double> gaps;
        double first = -1;
        auto result = client.Chat(
            r,
            [&](absl::string_view) {
              const double now = bench::NowSeconds();
              if (first < 0) first = now - start;
              if (last >= 0) gaps.push_back(now - last);
              last = now;
              return true;
            },
            absl::Minutes(30));
        std::lock_guard<std::mutex> lock(mu);
        ++level.requests;
        if (!result.ok()) {
          ++level.errors;
          std::fprintf(stderr, "request failed: %s\n", result.status().ToString().c_str());
          continue;
        }
        level.tokens += static_cast<int64_t>(result->token_ids.size());
        if (first >= 0) level.ttft.push_back(first);
        level.itl.insert(level.itl.end(), gaps.begin(), gaps.end());
      }
    });
  }
  for (auto& t : threads) t.join();
  level.seconds = bench::NowSeconds() - t0;
  return level;
}

struct PathResult {
  std::string path;
  std::vector<Level> levels;
  double turn1_ttft = 0, turn2_ttft = 0;
  int turn2_cached = 0, turn2_prompt = 0;
  std::vector<std::pair<std::string, std::pair<double, double>>> rss;  // name -> (loaded, peak)
};

// Two turns about one large image; TTFT of each (client-side, seconds).
void TwoTurns(const std::string& target, const Options& o, PathResult* out) {
  gateway::ChatClient client(target);
  ChatRequest first;
  first.question = "<image>\nDescribe this photo in detail.";
  first.images = {MakeImage(1920, 1080, 424242)};
  first.max_num = o.turn_max_num;
  first.history_given = true;  // the question carries its own <image>
  first.generation.max_new_tokens = 32;
  auto timed = [&](const ChatRequest& r, ChatResult* result) {
    const double start = bench::NowSeconds();
    double first_delta = -1;
    auto res = client.Chat(
        r,
        [&](absl::string_view) {
          if (first_delta < 0) first_delta = bench::NowSeconds() - start;
          return true;
        },
        absl::Minutes(60));
    if (!res.ok()) {
      std::fprintf(stderr, "two-turn chat failed: %s\n", res.status().ToString().c_str());
      return -1.0;
    }
    *result = *res;
    return first_delta >= 0 ? first_delta : res->timings.time_to_first_token_ms / 1e3;
  };
  ChatResult r1, r2;
  out->turn1_ttft = timed(first, &r1);
  ChatRequest second = first;
  second.history = {{first.question, r1.response}};
  second.question = "What colours dominate it?";
  out->turn2_ttft = timed(second, &r2);
  out->turn2_cached = r2.cached_prompt_tokens;
  out->turn2_prompt = r2.prompt_tokens;
}

void PrintPath(const PathResult& r) {
  std::printf("\n== %s ==\n", r.path.c_str());
  std::printf(
      "clients  requests  errors  tokens  seconds  tokens/s  x1-client  ttft_p50  ttft_p99  itl_p50  itl_p99\n");
  const double base = r.levels.empty() ? 0 : r.levels[0].tokens_per_s();
  for (const Level& l : r.levels) {
    std::printf("%7d  %8d  %6d  %6lld  %7.1f  %8.2f  %9.2f  %7.2fs  %7.2fs  %6.0fms  %6.0fms\n", l.clients, l.requests,
                l.errors, static_cast<long long>(l.tokens), l.seconds, l.tokens_per_s(),
                base > 0 ? l.tokens_per_s() / base : 0, Percentile(l.ttft, 0.5), Percentile(l.ttft, 0.99),
                Percentile(l.itl, 0.5) * 1e3, Percentile(l.itl, 0.99) * 1e3);
  }
  std::printf(
      "two turns, 1920x1080 image: TTFT turn 1 %.2f s, turn 2 %.2f s = %.1fx lower (%d of %d prompt tokens "
      "from the prefix cache)\n",
      r.turn1_ttft, r.turn2_ttft, r.turn2_ttft > 0 ? r.turn1_ttft / r.turn2_ttft : 0, r.turn2_cached, r.turn2_prompt);
  for (const auto& [name, m] : r.rss)
    std::printf("peak RSS %-14s %7.0f MiB (after loading %7.0f MiB)\n", name.c_str(), m.second, m.first);
}

int Run(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    absl::string_view a = argv[i];
    auto value = [&](absl::string_view flag) { return std::string(a.substr(flag.size())); };
    auto ints = [&](absl::string_view flag) {
      std::vector<int> v;
      for (absl::string_view s : absl::StrSplit(value(flag), ',')) {
        int n = 0;
        if (absl::SimpleAtoi(s, &n)) v.push_back(n);
      }
      return v;
    };
    bool ok = true;
    if (absl::StartsWith(a, "--model=")) {
      o.model = value("--model=");
    } else if (absl::StartsWith(a, "--tokenizer=")) {
      o.tokenizer = value("--tokenizer=");
    } else if (absl::StartsWith(a, "--dtype=")) {
      o.dtype = value("--dtype=");
    } else if (absl::StartsWith(a, "--quantize=")) {
      o.quantize = value("--quantize=");
    } else if (absl::StartsWith(a, "--threads=")) {
      ok = absl::SimpleAtoi(value("--threads="), &o.threads);
    } else if (absl::StartsWith(a, "--clients=")) {
      o.clients = ints("--clients=");
    } else if (absl::StartsWith(a, "--requests=")) {
      ok = absl::SimpleAtoi(value("--requests="), &o.requests);
    } else if (absl::StartsWith(a, "--max-new-tokens=")) {
      ok = absl::SimpleAtoi(value("--max-new-tokens="), &o.max_new_tokens);
    } else if (absl::StartsWith(a, "--image-every=")) {
      ok = absl::SimpleAtoi(value("--image-every="), &o.image_every);
    } else if (absl::StartsWith(a, "--image-max-num=")) {
      ok = absl::SimpleAtoi(value("--image-max-num="), &o.image_max_num);
    } else if (absl::StartsWith(a, "--paths=")) {
      o.paths = absl::StrSplit(value("--paths="), ',');
    } else if (absl::StartsWith(a, "--kv-cache-bytes=")) {
      ok = absl::SimpleAtoi(value("--kv-cache-bytes="), &o.kv_cache_bytes);
    } else if (absl::StartsWith(a, "--max-batched-tokens=")) {
      ok = absl::SimpleAtoi(value("--max-batched-tokens="), &o.max_batched_tokens);
    } else if (absl::StartsWith(a, "--max-num-seqs=")) {
      ok = absl::SimpleAtoi(value("--max-num-seqs="), &o.max_num_seqs);
    } else if (absl::StartsWith(a, "--turn-max-num=")) {
      ok = absl::SimpleAtoi(value("--turn-max-num="), &o.turn_max_num);
    } else if (a == "--keep") {
      o.keep = true;
    } else {
      ok = false;
    }
    if (!ok || o.clients.empty()) {
      std::fprintf(stderr, "bad flag %s (see the usage at the top of bench/bench_serving.cc)\n", argv[i]);
      return 2;
    }
  }
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  const std::string work = std::filesystem::temp_directory_path() / absl::StrCat("bench_serving.", getpid());
  std::filesystem::create_directories(work);
  bool made = false;
  if (o.model.empty()) {
    o.model = work + "/InternVL2-1B";
    modelgen::MakeModelOptions mo;
    mo.like = "InternVL2-1B";
    mo.out_dir = o.model;
    mo.tokenizer_dir = o.tokenizer;
    const pid_t pid = fork();  // its buffers stay out of this process
    if (pid == 0) {
      auto summary = modelgen::MakeModel(mo);
      if (!summary.ok()) {
        std::fprintf(stderr, "make-model: %s\n", summary.status().ToString().c_str());
        _exit(1);
      }
      std::printf("make-model --like InternVL2-1B: %.0fM parameters, %.0f MB in %.1f s\n", summary->params / 1e6,
                  summary->bytes / 1e6, summary->seconds);
      std::fflush(stdout);
      _exit(0);
    }
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) return 1;
    made = true;
  }
  std::printf(
      "model %s, dtype %s, quantize %s, %d threads per server, KV budget %.0f MiB, step budget %d tokens, %d "
      "sequences; %d requests per client, %d new tokens, an image every %d requests (max_num %d)\n",
      o.model.c_str(), o.dtype.c_str(), o.quantize.c_str(), o.threads, o.kv_cache_bytes / 1048576.0,
      o.max_batched_tokens, o.max_num_seqs, o.requests, o.max_new_tokens, o.image_every, o.image_max_num);
  const std::vector<std::string> engine = {"--kv-cache-bytes",     std::to_string(o.kv_cache_bytes),
                                           "--max-batched-tokens", std::to_string(o.max_batched_tokens),
                                           "--max-num-seqs",       std::to_string(o.max_num_seqs),
                                           "--quantize",           o.quantize};
  std::vector<PathResult> results;
  int image_seed = 1, question_seed = 1;
  for (const std::string& path : o.paths) {
    PathResult result;
    result.path = path;
    std::vector<Proc> procs;
    std::unique_ptr<st::RedisServer> redis;
    std::string target;
    if (path == "all-in-one") {
      std::vector<std::string> args = {"serve",   "--all-in-one", "--model",   o.model,
                                       "--dtype", o.dtype,        "--threads", std::to_string(o.threads)};
      args.insert(args.end(), engine.begin(), engine.end());
      procs.push_back(Spawn("all-in-one", INTERNVL_CLI_BIN, args, work + "/all_in_one.log"));
      WaitServing(procs.back(), "internvl.v1.InternVL");
      target = procs.back().target();
    } else if (path == "services") {
      auto r = st::RedisServer::Start(work);
      if (!r.ok()) {
        std::fprintf(stderr, "redis: %s\n", r.status().ToString().c_str());
        return 1;
      }
      redis = std::move(*r);
      procs.push_back(Spawn("preprocess", INTERNVL_PREPROCESS_BIN, {"--threads", "2"}, work + "/preprocess.log"));
      procs.push_back(Spawn("vision-encoder", INTERNVL_VISION_ENCODER_BIN,
                            {"--model", o.model, "--dtype", o.dtype, "--redis", redis->address(), "--threads", "4",
                             "--torch-threads", std::to_string(o.threads)},
                            work + "/vision.log"));
      std::vector<std::string> dec = {"--model", o.model, "--dtype", o.dtype, "--threads", std::to_string(o.threads)};
      dec.insert(dec.end(), engine.begin(), engine.end());
      procs.push_back(Spawn("llm-decoder", INTERNVL_LLM_DECODER_BIN, dec, work + "/decoder.log"));
      WaitServing(procs[0], "internvl.v1.Preprocess");
      WaitServing(procs[1], "internvl.v1.VisionEncoder");
      WaitServing(procs[2], "internvl.v1.LlmDecoder");
      procs.push_back(Spawn("gateway", INTERNVL_GATEWAY_BIN,
                            {"--model", o.model, "--preprocess-addr", procs[0].target(), "--vision-addr",
                             procs[1].target(), "--decoder-addr", procs[2].target(), "--deadline-ms", "3600000"},
                            work + "/gateway.log"));
      WaitServing(procs.back(), "internvl.v1.InternVL");
      target = procs.back().target();
    } else {
      std::fprintf(stderr, "unknown path %s\n", path.c_str());
      return 2;
    }
    {
      // Warm-up: one short text chat (oneDNN primitives, allocator).
      gateway::ChatClient client(target);
      ChatRequest warm;
      warm.question = "Hello";
      warm.generation.max_new_tokens = 4;
      auto w = client.Chat(warm);
      if (!w.ok()) {
        std::fprintf(stderr, "warm-up failed: %s\n", w.status().ToString().c_str());
        return 1;
      }
    }
    for (int c : o.clients) {
      result.levels.push_back(RunLevel(target, o, c, &image_seed, &question_seed));
      const Level& l = result.levels.back();
      std::printf("[%s] %2d clients: %.2f tokens/s (%lld tokens in %.1f s), TTFT p50 %.2f s\n", path.c_str(), c,
                  l.tokens_per_s(), static_cast<long long>(l.tokens), l.seconds, Percentile(l.ttft, 0.5));
    }
    TwoTurns(target, o, &result);
    for (Proc& p : procs) result.rss.push_back({p.name, {p.loaded_rss_mib, ProcMiB(p.process->pid(), "VmHWM:")}});
    PrintPath(result);
    results.push_back(std::move(result));
    for (Proc& p : procs) p.process->Signal(SIGTERM);
    for (Proc& p : procs) (void)p.process->Wait(absl::Seconds(30));
  }

  std::printf("\n== targets ==\n");
  for (const PathResult& r : results) {
    double one = 0, eight = 0;
    for (const Level& l : r.levels) {
      if (l.clients == 1) one = l.tokens_per_s();
      if (l.clients == 8) eight = l.tokens_per_s();
    }
    if (one > 0 && eight > 0)
      std::printf("[%s] 8 streams vs 1: %.2fx aggregate tokens/s (target >= 5x): %s\n", r.path.c_str(), eight / one,
                  eight / one >= 5 ? "met" : "NOT met");
    const double turns = r.turn2_ttft > 0 ? r.turn1_ttft / r.turn2_ttft : 0;
    std::printf("[%s] second turn TTFT %.1fx lower (target >= 10x): %s\n", r.path.c_str(), turns,
                turns >= 10 ? "met" : "NOT met");
    for (const auto& [name, m] : r.rss) {
      if (name != "all-in-one" && name != "llm-decoder") continue;
      const double bound = (m.first + o.kv_cache_bytes / 1048576.0) * 1.2;
      std::printf("[%s] %s peak RSS %.0f MiB vs (after loading %.0f + KV budget %.0f) x 1.2 = %.0f MiB: %s\n",
                  r.path.c_str(), name.c_str(), m.second, m.first, o.kv_cache_bytes / 1048576.0, bound,
                  m.second <= bound ? "met" : "NOT met");
    }
  }
  if (made && o.keep) std::printf("model kept in %s\n", o.model.c_str());
  if (!o.keep) std::filesystem::remove_all(work);
  return 0;
}

}  // namespace
}  // namespace internvl

int main(int argc, char** argv) { return internvl::Run(argc, argv); }
