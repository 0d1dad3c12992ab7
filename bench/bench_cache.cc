// bench_cache: EncodeImages through the vision encoder service with a Redis
// cache, cache miss (FLUSHALL before each run: lookup miss + decode + tile +
// encode + store) vs cache hit (lookup + reply). Reported as times and their
// ratio, since absolute times on shared machines are noisy.
//
//   bench_cache [MODEL_DIR [IMAGE [MAX_NUM [DTYPE]]]]
// Defaults: the tiny-qwen2 fixture, inputs/img_800x600.png, 6, fp32.
#include <csignal>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/time/clock.h"
#include "bench/bench_util.h"
#include "core/testing/fixtures.h"
#include "grpcpp/create_channel.h"
#include "services/common/stage_clients.h"
#include "services/common/testing/harness.h"
#include "services/common/testing/redis_server.h"

using namespace internvl;
using namespace internvl::services;

int main(int argc, char** argv) {
  const auto fixtures = internvl::testing::FixturesDir();
  // An empty argument takes the default.
  const std::string model = argc > 1 && argv[1][0] ? std::string(argv[1]) : fixtures.value_or(".") + "/tiny-qwen2";
  const std::string image_path =
      argc > 2 && argv[2][0] ? std::string(argv[2]) : fixtures.value_or(".") + "/inputs/img_800x600.png";
  int max_num = 6;
  if (argc > 3 && !absl::SimpleAtoi(argv[3], &max_num)) return 2;
  const std::string dtype = argc > 4 ? argv[4] : "fp32";

  std::ifstream in(image_path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string image = ss.str();
  if (image.empty()) {
    std::fprintf(stderr, "cannot read %s\n", image_path.c_str());
    return 1;
  }
  const std::string dir = internvl::testing::TempDir();
  auto redis = services::testing::RedisServer::Start(dir);
  if (!redis.ok()) {
    std::fprintf(stderr, "%s\n", redis.status().ToString().c_str());
    return 1;
  }
  const int port = services::testing::PickFreePort().value();
  const std::string target = "127.0.0.1:" + std::to_string(port);
  auto encoder = services::testing::Subprocess::Spawn(
      INTERNVL_VISION_ENCODER_BIN,
      {"--model", model, "--dtype", dtype, "--redis", (*redis)->address(), "--listen", target, "--metrics-port",
       std::to_string(services::testing::PickFreePort().value())},
      dir + "/vision_encoder.log");
  if (!encoder.ok()) return 1;
  if (absl::Status s = services::testing::WaitForServing(target, "", encoder->get(), absl::Minutes(5)); !s.ok()) {
    std::fprintf(stderr, "%s\n", s.ToString().c_str());
    return 1;
  }
  auto stub = v1::VisionEncoder::NewStub(grpc::CreateChannel(target, grpc::InsecureChannelCredentials()));
  v1::PreprocessImagesRequest request;
  request.add_images(image);
  request.mutable_tiling()->set_max_num(max_num);
  int tiles = 0;
  bool failed = false;
  auto call = [&](v1::EmbeddingSource expected) {
    grpc::ClientContext context;
    auto reply = CallEncodeImages(stub.get(), &context, request);
    if (!reply.ok() || (*reply)[0].info.source() != expected) {
      std::fprintf(stderr, "unexpected reply: %s\n", reply.ok() ? "wrong source" : reply.status().ToString().c_str());
      failed = true;
      return;
    }
    tiles = (*reply)[0].info.num_patches();
  };
  const int reps = 5;
  const double miss = bench::BestOf(reps, [&] {
    (void)(*redis)->Command({"FLUSHALL"});
    call(v1::EMBEDDING_SOURCE_ENCODED);
  });
  // The last miss run stored the entry: from here on every call is a hit.
  const double hit = bench::BestOf(reps * 4, [&] { call(v1::EMBEDDING_SOURCE_CACHE); });
  // The flush itself is in the miss time: measure it to report it.
  const double flush = bench::BestOf(reps, [&] { (void)(*redis)->Command({"FLUSHALL"}); });
  if (failed) return 1;
  std::printf("bench_cache: model %s (%s), image %s, %d tiles\n", model.c_str(), dtype.c_str(), image_path.c_str(),
              tiles);
  std::printf("  cache miss (decode+tile+encode+store): %8.2f ms (incl. %.2f ms FLUSHALL)\n", miss * 1e3, flush * 1e3);
  std::printf("  cache hit  (lookup+reply):             %8.2f ms\n", hit * 1e3);
  std::printf("  miss / hit: %.1fx\n", (miss - flush) / hit);
  (*encoder)->Signal(SIGTERM);
  (void)(*encoder)->Wait(absl::Seconds(30));
  return 0;
}
