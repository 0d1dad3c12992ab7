// bench_gateway: end-to-end latency of one Chat request through the services
// path (gateway -> preprocess -> vision encoder -> decoder, four processes,
// gRPC on loopback) against `internvl serve --all-in-one` (every stage in one
// process) for the same request. Both have an embedding cache, so after the
// warm-up both serve the image from cache: the difference is the gRPC
// overhead (hops, tensor chunking, serialisation), reported as a ratio since
// absolute times on shared machines are noisy. Best of N.
//
//   bench_gateway [MODEL_DIR [IMAGE [MAX_NUM [MAX_NEW_TOKENS [REPS [DTYPE]]]]]]
// Defaults: the tiny-qwen2 fixture, inputs/img_800x600.png, 6, 16, 5, fp32.
#include <csignal>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "bench/bench_util.h"
#include "core/testing/fixtures.h"
#include "gateway/client.h"
#include "services/common/testing/harness.h"

using namespace internvl;
namespace st = internvl::services::testing;

namespace {
using Proc = st::ServerProcess;
Proc Spawn(const std::string& bin, std::vector<std::string> args, const std::string& log) {
  auto p = st::SpawnServer(bin, std::move(args), log);
  if (!p.ok()) {
    std::fprintf(stderr, "%s\n", p.status().ToString().c_str());
    std::exit(1);
  }
  return std::move(*p);
}
}  // namespace

int main(int argc, char** argv) {
  const auto fixtures = internvl::testing::FixturesDir();
  auto arg = [&](int i, const std::string& def) { return argc > i && argv[i][0] ? std::string(argv[i]) : def; };
  const std::string model = arg(1, fixtures.value_or(".") + "/tiny-qwen2");
  const std::string image_path = arg(2, fixtures.value_or(".") + "/inputs/img_800x600.png");
  int max_num = 6, max_new = 16, reps = 5;
  if (!absl::SimpleAtoi(arg(3, "6"), &max_num) || !absl::SimpleAtoi(arg(4, "16"), &max_new) ||
      !absl::SimpleAtoi(arg(5, "5"), &reps))
    return 2;
  const std::string dtype = arg(6, "fp32");
  std::ifstream in(image_path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  ChatRequest request;
  request.question = "Please describe the image shortly.";
  request.images = {ss.str()};
  request.max_num = max_num;
  request.generation.max_new_tokens = max_new;
  if (request.images[0].empty()) {
    std::fprintf(stderr, "cannot read %s\n", image_path.c_str());
    return 2;
  }
  const std::string dir = internvl::testing::TempDir();
  Proc pre = Spawn(INTERNVL_PREPROCESS_BIN, {}, dir + "/bench_gw_pre.log");
  Proc vis = Spawn(INTERNVL_VISION_ENCODER_BIN, {"--model", model, "--dtype", dtype}, dir + "/bench_gw_vis.log");
  Proc dec = Spawn(INTERNVL_LLM_DECODER_BIN, {"--model", model, "--dtype", dtype}, dir + "/bench_gw_dec.log");
  Proc gw = Spawn(INTERNVL_GATEWAY_BIN,
                  {"--model", model, "--preprocess-addr", pre.target(), "--vision-addr", vis.target(), "--decoder-addr",
                   dec.target()},
                  dir + "/bench_gw_gateway.log");
  Proc aio =
      Spawn(INTERNVL_CLI_BIN, {"serve", "--all-in-one", "--model", model, "--dtype", dtype}, dir + "/bench_gw_aio.log");
  for (auto [p, name] : {std::pair{&pre, "internvl.v1.Preprocess"},
                         {&vis, "internvl.v1.VisionEncoder"},
                         {&dec, "internvl.v1.LlmDecoder"},
                         {&gw, "internvl.v1.InternVL"},
                         {&aio, "internvl.v1.InternVL"}}) {
    if (absl::Status s = st::WaitForServing(p->target(), name, p->process.get(), absl::Seconds(300)); !s.ok()) {
      std::fprintf(stderr, "%s: %s\n", name, s.ToString().c_str());
      return 1;
    }
  }
  auto run = [&](const Proc& server) {
    gateway::ChatClient client(server.target());
    std::vector<int> ids;
    const double t = bench::BestOf(reps, [&] {
      auto r = client.Chat(request);
      if (!r.ok()) {
        std::fprintf(stderr, "%s\n", r.status().ToString().c_str());
        std::exit(1);
      }
      ids = r->token_ids;
    });
    return std::pair{t, ids};
  };
  const auto [services_s, services_ids] = run(gw);
  const auto [aio_s, aio_ids] = run(aio);
  std::printf("bench_gateway: %s, %s, max_num %d, %d new tokens, best of %d (embeddings cached after warm-up)\n",
              model.c_str(), dtype.c_str(), max_num, max_new, reps);
  std::printf("  services path (4 processes, gRPC): %8.1f ms\n", services_s * 1e3);
  std::printf("  all-in-one (1 process)           : %8.1f ms\n", aio_s * 1e3);
  std::printf("  gRPC overhead ratio services/all-in-one: %.3f  (same ids: %s)\n", services_s / aio_s,
              services_ids == aio_ids ? "yes" : "NO");
  for (Proc* p : {&gw, &aio, &dec, &vis, &pre}) {
    p->process->Signal(SIGTERM);
    (void)p->process->Wait(absl::Seconds(30));
  }
  return services_ids == aio_ids ? 0 : 1;
}
