// The preprocess and vision encoder services as deployed: real binaries on
// free loopback ports, a real redis-server, real gRPC. Checks results against
// the in-process core (bit-exact), the Redis cache (a second request is a hit,
// no second encode; Redis dying is only misses), limits and bad media (clear
// errors, servers stay SERVING), unreachable stages (UNAVAILABLE, no hang),
// and SIGTERM (exit 0).
#include <csignal>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "core/preprocess/tiling.h"
#include "core/testing/fixtures.h"
#include "core/video/video.h"
#include "core/vision/vision_model.h"
#include "gmock/gmock.h"
#include "grpcpp/create_channel.h"
#include "gtest/gtest.h"
#include "services/common/sha256.h"
#include "services/common/stage_clients.h"
#include "services/common/testing/harness.h"
#include "services/common/testing/redis_server.h"

namespace internvl {
// Defined in core/nn/torch_util.cc; declared here to keep torch headers out.
void SetTorchThreads(int n);
}  // namespace internvl

namespace internvl::services {
namespace {

using ::testing::HasSubstr;
using testing::HttpGet;
using testing::MetricValue;

constexpr int kMaxImages = 4;
const absl::Duration kStartTimeout = absl::Seconds(60);

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::unique_ptr<grpc::ClientContext> Context(absl::Duration timeout = absl::Seconds(60)) {
  auto c = std::make_unique<grpc::ClientContext>();
  c->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  return c;
}

struct Service {
  std::unique_ptr<testing::Subprocess> process;
  int port = 0;
  int metrics_port = 0;
  std::string target() const { return "127.0.0.1:" + std::to_string(port); }
};

class ServicesTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const auto fixtures = ::internvl::testing::FixturesDir();
    if (!fixtures) return;  // each test skips (or fails under CI)
    fixtures_ = new std::string(*fixtures);
    const std::string dir = ::internvl::testing::TempDir();
    auto redis = testing::RedisServer::Start(dir);
    ASSERT_TRUE(redis.ok()) << redis.status();
    redis_ = redis->release();
    preprocess_ = new Service(Spawn(INTERNVL_PREPROCESS_BIN,
                                    {"--max-images", std::to_string(kMaxImages), "--max-tiles", "12", "--threads", "2"},
                                    dir + "/preprocess.log"));
    encoder_ = new Service(Spawn(
        INTERNVL_VISION_ENCODER_BIN,
        {"--model", *fixtures_ + "/tiny-qwen2", "--dtype", "fp32", "--redis", redis_->address(), "--cache-ttl-seconds",
         "600", "--max-images", std::to_string(kMaxImages), "--max-tiles", "12", "--threads", "2"},
        dir + "/vision_encoder.log"));
    ASSERT_TRUE(testing::WaitForServing(preprocess_->target(), "internvl.v1.Preprocess", preprocess_->process.get(),
                                        kStartTimeout)
                    .ok());
    const absl::Status ready = testing::WaitForServing(encoder_->target(), "internvl.v1.VisionEncoder",
                                                       encoder_->process.get(), kStartTimeout);
    ASSERT_TRUE(ready.ok()) << ready;
    // The services run with --threads 2; the in-process reference must too
    // for bit-identical embeddings (fp32 matmuls sum in another order on
    // another thread count).
    SetTorchThreads(2);
    auto model = VisionModel::Load(*fixtures_ + "/tiny-qwen2", VisionOptions{.dtype = "fp32", .tile_batch = 4});
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = model->release();
  }
  static void TearDownTestSuite() {
    delete preprocess_;
    delete encoder_;
    delete redis_;
    delete model_;
    delete fixtures_;
  }

  static Service Spawn(const std::string& binary, std::vector<std::string> args, const std::string& log) {
    Service s;
    s.port = testing::PickFreePort().value();
    s.metrics_port = testing::PickFreePort().value();
    // The grace only bounds the drain test's wait: its 13-tile encode took
    // over 5 s in CI with other tests sharing the 2 cores.
    args.insert(args.end(),
                {"--listen", s.target(), "--metrics-port", std::to_string(s.metrics_port), "--grace-seconds", "30"});
    auto p = testing::Subprocess::Spawn(binary, args, log);
    EXPECT_TRUE(p.ok()) << p.status();
    if (p.ok()) s.process = std::move(*p);
    return s;
  }

  void SetUp() override {
    if (fixtures_ == nullptr) {
      INTERNVL_REQUIRE_FIXTURES(fixtures);
    }
    ASSERT_NE(model_, nullptr) << "suite setup failed";
    preprocess_stub_ =
        v1::Preprocess::NewStub(grpc::CreateChannel(preprocess_->target(), grpc::InsecureChannelCredentials()));
    encoder_stub_ =
        v1::VisionEncoder::NewStub(grpc::CreateChannel(encoder_->target(), grpc::InsecureChannelCredentials()));
  }

  std::string Image(const std::string& name) const { return ReadFile(*fixtures_ + "/inputs/" + name); }

  // The in-process reference: core tiling + core VisionModel.
  HostTensor Reference(const HostTensor& tiles_u8) const {
    const int n = static_cast<int>(tiles_u8.shape[0]);
    const int s = static_cast<int>(tiles_u8.shape[1]);
    HostTensor pixels(DType::kF32, {n, 3, s, s});
    preprocess::NormalizeTilesU8(tiles_u8.data<uint8_t>(), n, s, pixels.data<float>());
    auto out = model_->ExtractFeature(pixels);
    EXPECT_TRUE(out.ok()) << out.status();
    return *out;
  }

  double EncoderMetric(const std::string& series) const {
    auto text = HttpGet(encoder_->metrics_port, "/metrics");
    EXPECT_TRUE(text.ok()) << text.status();
    return MetricValue(text.value_or(""), series).value_or(-1);
  }

  void ExpectBothServing() const {
    EXPECT_EQ(testing::HealthCheck(preprocess_->target(), "internvl.v1.Preprocess").value_or("?"), "SERVING");
    EXPECT_EQ(testing::HealthCheck(encoder_->target(), "internvl.v1.VisionEncoder").value_or("?"), "SERVING");
  }

  static inline std::string* fixtures_ = nullptr;
  static inline testing::RedisServer* redis_ = nullptr;
  static inline Service* preprocess_ = nullptr;
  static inline Service* encoder_ = nullptr;
  static inline VisionModel* model_ = nullptr;
  std::unique_ptr<v1::Preprocess::Stub> preprocess_stub_;
  std::unique_ptr<v1::VisionEncoder::Stub> encoder_stub_;
};

TEST_F(ServicesTest, PreprocessThenEncodeMatchesInProcessAndSecondRequestIsACacheHit) {
  const std::string bytes = Image("img_800x600.png");
  v1::PreprocessImagesRequest request;
  request.add_images(bytes);
  request.mutable_tiling()->set_max_num(6);
  auto tiled = CallPreprocessImages(preprocess_stub_.get(), Context().get(), request);
  ASSERT_TRUE(tiled.ok()) << tiled.status();
  ASSERT_EQ(tiled->size(), 1u);
  const TiledImageReply& image = (*tiled)[0];
  auto local = preprocess::LoadImageTiles(bytes, preprocess::TilingOptions{.max_num = 6});
  ASSERT_TRUE(local.ok());
  EXPECT_EQ(image.info.num_patches(), local->count);
  EXPECT_EQ(image.info.grid_cols(), local->grid.cols);
  EXPECT_EQ(image.info.grid_rows(), local->grid.rows);
  EXPECT_EQ(image.info.has_thumbnail(), local->has_thumbnail);
  EXPECT_EQ(image.tiles.shape, (std::vector<int64_t>{local->count, 448, 448, 3}));
  ASSERT_TRUE(image.tiles.bytes == local->data) << "tiles differ from core LoadImageTiles";

  v1::EncodeHeader header;
  header.set_media_sha256(image.info.media_sha256());
  *header.mutable_tiling() = request.tiling();
  const double encodes_before = EncoderMetric("internvl_encodes_total");
  auto first = CallEncode(encoder_stub_.get(), Context().get(), header, image.tiles);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->info.source(), v1::EMBEDDING_SOURCE_ENCODED);
  const HostTensor expected = Reference(image.tiles);
  EXPECT_EQ(first->embeddings.dtype, DType::kF32);
  EXPECT_EQ(first->embeddings.shape, expected.shape);
  EXPECT_TRUE(first->embeddings.bytes == expected.bytes) << "embeddings differ from the in-process VisionModel";
  EXPECT_EQ(EncoderMetric("internvl_encodes_total"), encodes_before + 1);

  // The key is in Redis, with the configured TTL.
  const std::string key = first->info.cache_key();
  EXPECT_EQ(redis_->Command({"EXISTS", key}).value_or("?"), "1");
  EXPECT_GT(std::stoi(redis_->Command({"TTL", key}).value_or("0")), 500);

  auto second = CallEncode(encoder_stub_.get(), Context().get(), header, image.tiles);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->info.source(), v1::EMBEDDING_SOURCE_CACHE);
  EXPECT_EQ(second->info.cache_key(), key);
  EXPECT_TRUE(second->embeddings.bytes == expected.bytes);
  EXPECT_EQ(EncoderMetric("internvl_encodes_total"), encodes_before + 1) << "the second request encoded again";
  EXPECT_GE(EncoderMetric("internvl_cache_hits_total"), 1);
}

// The cache key comes from the tiles the server received: tiles sent under
// another image's media_sha256 get their own embeddings, never that image's
// (and cannot plant theirs under its digest).
TEST_F(ServicesTest, ForgedMediaDigestCannotPoisonTheCache) {
  v1::PreprocessImagesRequest request;
  request.add_images(Image("img_448x448.png"));
  request.add_images(Image("img_37x53.png"));
  request.mutable_tiling()->set_max_num(1);
  auto tiled = CallPreprocessImages(preprocess_stub_.get(), Context().get(), request);
  ASSERT_TRUE(tiled.ok()) << tiled.status();
  ASSERT_EQ(tiled->size(), 2u);
  const TiledImageReply& victim = (*tiled)[0];
  const TiledImageReply& attacker = (*tiled)[1];
  v1::EncodeHeader forged;
  forged.set_media_sha256(victim.info.media_sha256());  // claims to be the victim's image
  *forged.mutable_tiling() = request.tiling();
  auto planted = CallEncode(encoder_stub_.get(), Context().get(), forged, attacker.tiles);
  ASSERT_TRUE(planted.ok()) << planted.status();
  EXPECT_TRUE(planted->embeddings.bytes == Reference(attacker.tiles).bytes);
  // The victim's own request gets the victim's embeddings.
  v1::EncodeHeader honest = forged;
  auto victims = CallEncode(encoder_stub_.get(), Context().get(), honest, victim.tiles);
  ASSERT_TRUE(victims.ok()) << victims.status();
  EXPECT_NE(victims->info.cache_key(), planted->info.cache_key());
  EXPECT_TRUE(victims->embeddings.bytes == Reference(victim.tiles).bytes) << "the cache served another image's rows";
}

TEST_F(ServicesTest, EncodeImagesEncodesEachImageWithItsOwnMaxNumAndCaches) {
  v1::PreprocessImagesRequest request;
  request.add_images(Image("img_37x53.png"));
  request.add_images(Image("img_1920x200.png"));
  request.mutable_tiling()->set_max_num(4);
  auto reply = CallEncodeImages(encoder_stub_.get(), Context().get(), request);
  ASSERT_TRUE(reply.ok()) << reply.status();
  ASSERT_EQ(reply->size(), 2u);
  for (int i = 0; i < 2; ++i) {
    const EmbeddingReply& r = (*reply)[i];
    auto local = preprocess::LoadImageTiles(request.images(i), preprocess::TilingOptions{.max_num = 4});
    ASSERT_TRUE(local.ok());
    HostTensor tiles(DType::kU8, {local->count, local->size, local->size, 3});
    tiles.bytes = local->data;
    EXPECT_EQ(r.info.image_index(), i);
    EXPECT_EQ(r.info.num_patches(), local->count);  // max_num applies to each image
    EXPECT_EQ(r.info.tiles().grid_cols(), local->grid.cols);
    EXPECT_TRUE(r.embeddings.bytes == Reference(tiles).bytes) << "image " << i;
  }
  const double encodes = EncoderMetric("internvl_encodes_total");
  auto again = CallEncodeImages(encoder_stub_.get(), Context().get(), request);
  ASSERT_TRUE(again.ok()) << again.status();
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ((*again)[i].info.source(), v1::EMBEDDING_SOURCE_CACHE);
    EXPECT_TRUE((*again)[i].embeddings.bytes == (*reply)[i].embeddings.bytes);
    EXPECT_EQ((*again)[i].info.num_patches(), (*reply)[i].info.num_patches());
  }
  EXPECT_EQ(EncoderMetric("internvl_encodes_total"), encodes);
}

TEST_F(ServicesTest, ConcurrentIdenticalRequestsEncodeOnce) {
  v1::PreprocessImagesRequest request;
  request.add_images(Image("img_300x1200.png"));
  request.mutable_tiling()->set_max_num(5);
  const double encodes = EncoderMetric("internvl_encodes_total");
  std::vector<std::thread> threads;
  std::vector<absl::StatusOr<std::vector<EmbeddingReply>>> replies(4, absl::UnknownError("not run"));
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] { replies[i] = CallEncodeImages(encoder_stub_.get(), Context().get(), request); });
  }
  for (auto& t : threads) t.join();
  for (const auto& r : replies) {
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_TRUE((*r)[0].embeddings.bytes == (*replies[0])[0].embeddings.bytes);
  }
  EXPECT_EQ(EncoderMetric("internvl_encodes_total"), encodes + 1);
}

TEST_F(ServicesTest, PreprocessVideoPicksTheOfficialFramesAndMatchesCore) {
  const std::string video = ReadFile(*fixtures_ + "/inputs/video.mp4");
  ASSERT_FALSE(video.empty());
  v1::VideoSettings settings;  // defaults: 8 segments, one tile per frame
  auto reply = CallPreprocessVideo(preprocess_stub_.get(), Context().get(), settings, video, 64 << 10);
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_THAT(reply->video.frame_indices(), ::testing::ElementsAre(7, 23, 38, 53, 69, 85, 100, 115));
  ASSERT_EQ(reply->frames.size(), 8u);
  auto local = video::LoadVideoFrames(video, video::VideoOptions());
  ASSERT_TRUE(local.ok()) << local.status();
  for (int f = 0; f < 8; ++f) {
    const auto& frame = reply->frames[f];
    EXPECT_EQ(frame.info.image_index(), f);
    ASSERT_EQ(frame.info.num_patches(), 1);
    ASSERT_TRUE(std::equal(frame.tiles.bytes.begin(), frame.tiles.bytes.end(), local->tiles.tile(f))) << f;
  }
}

TEST_F(ServicesTest, BadRequestsGetClearErrorsAndServicesStayServing) {
  v1::PreprocessImagesRequest corrupt;
  corrupt.add_images(Image("img_37x53.png"));
  corrupt.add_images("\x89PNG\r\n\x1a\n this is not a PNG");
  auto a = CallPreprocessImages(preprocess_stub_.get(), Context().get(), corrupt);
  EXPECT_EQ(a.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(a.status().message(), HasSubstr("image 1"));
  auto b = CallEncodeImages(encoder_stub_.get(), Context().get(), corrupt);
  EXPECT_EQ(b.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(b.status().message(), HasSubstr("image 1"));

  v1::PreprocessImagesRequest too_many;
  for (int i = 0; i <= kMaxImages; ++i) too_many.add_images(Image("img_37x53.png"));
  auto c = CallPreprocessImages(preprocess_stub_.get(), Context().get(), too_many);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(c.status().message(), HasSubstr("too many images: 5"));
  EXPECT_EQ(CallEncodeImages(encoder_stub_.get(), Context().get(), too_many).status().code(),
            absl::StatusCode::kResourceExhausted);

  v1::PreprocessImagesRequest big_max_num;
  big_max_num.add_images(Image("img_37x53.png"));
  big_max_num.mutable_tiling()->set_max_num(13);
  auto d = CallPreprocessImages(preprocess_stub_.get(), Context().get(), big_max_num);
  EXPECT_EQ(d.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(d.status().message(), HasSubstr("max_num 13"));

  // Tiles of the wrong shape, and a declared size that does not match.
  HostTensor wrong(DType::kU8, {1, 224, 224, 3});
  auto e = CallEncode(encoder_stub_.get(), Context().get(), v1::EncodeHeader(), wrong);
  EXPECT_EQ(e.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(e.status().message(), HasSubstr("448"));
  HostTensor too_many_tiles(DType::kU8, {14, 448, 448, 3});
  EXPECT_EQ(CallEncode(encoder_stub_.get(), Context().get(), v1::EncodeHeader(), too_many_tiles).status().code(),
            absl::StatusCode::kResourceExhausted);

  auto f = CallPreprocessVideo(preprocess_stub_.get(), Context().get(), v1::VideoSettings(), "not a video at all");
  EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
  v1::VideoSettings many_segments;
  many_segments.set_num_segments(1000);
  EXPECT_EQ(CallPreprocessVideo(preprocess_stub_.get(), Context().get(), many_segments, "x").status().code(),
            absl::StatusCode::kResourceExhausted);

  ExpectBothServing();
  auto metrics = HttpGet(preprocess_->metrics_port, "/metrics");
  ASSERT_TRUE(metrics.ok());
  EXPECT_GE(MetricValue(*metrics,
                        "internvl_requests_total{code=\"INVALID_ARGUMENT\",method=\"PreprocessImages\","
                        "service=\"preprocess\"}")
                .value_or(0),
            1);
  EXPECT_TRUE(MetricValue(*metrics, "internvl_queue_depth{service=\"preprocess\"}").has_value());
}

TEST_F(ServicesTest, UnreachableStageIsUnavailableWithinTheDeadline) {
  const int port = testing::PickFreePort().value();
  auto stub = v1::VisionEncoder::NewStub(
      grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()));
  v1::PreprocessImagesRequest request;
  request.add_images(Image("img_37x53.png"));
  const absl::Time start = absl::Now();
  auto r = CallEncodeImages(stub.get(), Context(absl::Seconds(5)).get(), request);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
}

TEST_F(ServicesTest, RedisStoppedMidTestRequestsStillSucceed) {
  v1::PreprocessImagesRequest request;
  request.add_images(Image("img_448x448.png"));
  auto before = CallEncodeImages(encoder_stub_.get(), Context().get(), request);
  ASSERT_TRUE(before.ok()) << before.status();
  redis_->Stop();
  for (int i = 0; i < 2; ++i) {
    auto r = CallEncodeImages(encoder_stub_.get(), Context(absl::Seconds(10)).get(), request);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ((*r)[0].info.source(), v1::EMBEDDING_SOURCE_ENCODED);
    EXPECT_TRUE((*r)[0].embeddings.bytes == (*before)[0].embeddings.bytes);
  }
  EXPECT_GE(EncoderMetric("internvl_cache_errors_total{op=\"get\"}"), 2);
  ExpectBothServing();
}

// Last: stops the suite's servers. The encoder gets SIGTERM while a call is
// encoding: that call still completes within the grace period.
TEST_F(ServicesTest, SigtermFinishesInFlightCallsAndExitsZero) {
  v1::PreprocessImagesRequest request;
  request.add_images(Image("img_1920x200.png"));
  request.mutable_tiling()->set_max_num(12);
  request.mutable_tiling()->set_min_num(12);  // 12 tiles + thumbnail: a long encode
  absl::StatusOr<std::vector<EmbeddingReply>> in_flight = absl::UnknownError("not run");
  std::thread call([&] { in_flight = CallEncodeImages(encoder_stub_.get(), Context().get(), request); });
  // Wait until the encoder is busy with it.
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (EncoderMetric("internvl_busy_workers{service=\"vision_encoder\"}") < 1 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  for (Service* s : {encoder_, preprocess_}) {
    s->process->Signal(SIGTERM);
  }
  // While it drains, a new call is refused (retryable) on the open
  // connection, and the in-flight one goes on.
  absl::SleepFor(absl::Milliseconds(200));
  const auto refused = CallEncodeImages(encoder_stub_.get(), Context(absl::Seconds(5)).get(), request).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kUnavailable) << refused;
  EXPECT_THAT(refused.message(), HasSubstr("shutting down"));
  call.join();
  ASSERT_TRUE(in_flight.ok()) << in_flight.status();
  EXPECT_EQ((*in_flight)[0].info.num_patches(), 13);
  for (Service* s : {encoder_, preprocess_}) {
    auto code = s->process->Wait(absl::Seconds(40));
    ASSERT_TRUE(code.ok()) << code.status();
    EXPECT_EQ(*code, 0) << s->process->ReadLog();
    EXPECT_THAT(s->process->ReadLog(), HasSubstr("shut down cleanly"));
  }
  // New calls are refused once the server is gone.
  EXPECT_EQ(CallEncodeImages(encoder_stub_.get(), Context(absl::Seconds(5)).get(), request).status().code(),
            absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace internvl::services
