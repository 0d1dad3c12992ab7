// Embedding cache: value codec, keys, in-memory LRU, single-flight, the
// Embedder's failure policy, and RedisEmbeddingCache against a real
// redis-server (including Redis dying mid-test).
#include <atomic>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "core/testing/fixtures.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "services/common/testing/redis_server.h"
#include "services/vision_encoder/embedder.h"
#include "services/vision_encoder/embedding_cache.h"
#include "services/vision_encoder/in_memory_cache.h"
#include "services/vision_encoder/redis_cache.h"
#include "services/vision_encoder/single_flight.h"

namespace internvl::services {
namespace {

using ::testing::HasSubstr;

HostTensor Embeddings(int n, uint8_t seed) {
  HostTensor t(DType::kBF16, {n, 4, 8});
  for (size_t i = 0; i < t.bytes.size(); ++i) t.bytes[i] = static_cast<uint8_t>(seed + i * 7);
  return t;
}

TEST(CacheValueCodec, RoundTripsAndRejectsEveryCorruption) {
  const HostTensor t = Embeddings(3, 1);
  const std::string value = EncodeCacheValue(t);
  auto back = DecodeCacheValue(value);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->dtype, t.dtype);
  EXPECT_EQ(back->shape, t.shape);
  EXPECT_EQ(back->bytes, t.bytes);

  std::string flipped = value;
  flipped.back() ^= 1;  // payload bit flip
  EXPECT_THAT(DecodeCacheValue(flipped).status().message(), HasSubstr("checksum"));
  EXPECT_EQ(DecodeCacheValue(value.substr(0, value.size() - 1)).status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(DecodeCacheValue(value + "x").status().code(), absl::StatusCode::kDataLoss);
  std::string magic = value;
  magic[0] = 'X';
  EXPECT_THAT(DecodeCacheValue(magic).status().message(), HasSubstr("magic"));
  std::string version = value;
  version[4] = 9;
  EXPECT_THAT(DecodeCacheValue(version).status().message(), HasSubstr("version"));
  std::string shape = value;
  shape[16] = 4;  // first dim 3 -> 4: size no longer matches
  EXPECT_THAT(DecodeCacheValue(shape).status().message(), HasSubstr("size"));
  EXPECT_EQ(DecodeCacheValue("").status().code(), absl::StatusCode::kDataLoss);
}

TEST(EmbeddingCacheKey, DependsOnEveryPart) {
  EmbeddingKeyParts base;
  base.media_sha256 = Sha256Of("image bytes");
  base.model_fingerprint = "weights:bf16";
  const std::string k = EmbeddingCacheKey(base);
  EXPECT_THAT(k, ::testing::StartsWith("internvl:emb:v1:"));
  EXPECT_EQ(k.size(), std::string("internvl:emb:v1:").size() + 64);
  EXPECT_EQ(EmbeddingCacheKey(base), k);  // deterministic
  auto differs = [&](auto mutate) {
    EmbeddingKeyParts p = base;
    mutate(p);
    return EmbeddingCacheKey(p) != k;
  };
  EXPECT_TRUE(differs([](auto& p) { p.media_sha256 = Sha256Of("other bytes"); }));
  EXPECT_TRUE(differs([](auto& p) { p.tiling.max_num = 6; }));
  EXPECT_TRUE(differs([](auto& p) { p.tiling.use_thumbnail = false; }));
  EXPECT_TRUE(differs([](auto& p) { p.tiling.min_num = 2; }));
  EXPECT_TRUE(differs([](auto& p) { p.num_segments = 8; }));
  EXPECT_TRUE(differs([](auto& p) { p.model_fingerprint = "weights:fp32"; }));
}

TEST(InMemoryEmbeddingCache, EvictsLeastRecentlyUsedByBytes) {
  const size_t entry = Embeddings(1, 0).bytes.size();  // 64 bytes
  InMemoryEmbeddingCache cache(3 * entry);
  ASSERT_TRUE(cache.Put("a", Embeddings(1, 1)).ok());
  ASSERT_TRUE(cache.Put("b", Embeddings(1, 2)).ok());
  ASSERT_TRUE(cache.Put("c", Embeddings(1, 3)).ok());
  ASSERT_TRUE(cache.Get("a").value().has_value());     // a is now the most recent
  ASSERT_TRUE(cache.Put("d", Embeddings(1, 4)).ok());  // evicts b
  EXPECT_FALSE(cache.Get("b").value().has_value());
  EXPECT_EQ(cache.Get("a").value()->bytes, Embeddings(1, 1).bytes);
  EXPECT_TRUE(cache.Get("c").value().has_value());
  EXPECT_TRUE(cache.Get("d").value().has_value());
  EXPECT_EQ(cache.bytes(), 3 * entry);
  ASSERT_TRUE(cache.Put("huge", Embeddings(4, 5)).ok());  // larger than the cache: not stored
  EXPECT_FALSE(cache.Get("huge").value().has_value());
  EXPECT_EQ(cache.entries(), 3u);
}

TEST(SingleFlight, ConcurrentCallsForOneKeyRunOnce) {
  SingleFlight<int> flights;
  std::atomic<int> runs{0};
  absl::Notification release;
  std::vector<std::thread> threads;
  std::vector<SingleFlight<int>::Outcome> outcomes(6);
  for (int i = 0; i < 6; ++i) {
    threads.emplace_back([&, i] {
      outcomes[i] = flights.Do("k", [&] {
        ++runs;
        release.WaitForNotification();
        return 42;
      });
    });
  }
  // Wait until the leader runs and the others are queued behind it.
  while (runs.load() == 0) absl::SleepFor(absl::Milliseconds(1));
  absl::SleepFor(absl::Milliseconds(100));
  release.Notify();
  for (auto& t : threads) t.join();
  EXPECT_EQ(runs.load(), 1);
  int shared = 0;
  for (const auto& o : outcomes) {
    EXPECT_EQ(*o.value, 42);
    shared += o.shared;
  }
  EXPECT_EQ(shared, 5);
  EXPECT_EQ(flights.in_flight(), 0u);
  // A later call runs again.
  EXPECT_FALSE(flights.Do("k", [] { return 7; }).shared);
}

// A cache whose every call fails, as a dead Redis does.
class BrokenCache final : public EmbeddingCache {
 public:
  absl::StatusOr<std::optional<HostTensor>> Get(const std::string&) override {
    return absl::UnavailableError("connection refused");
  }
  absl::Status Put(const std::string&, const HostTensor&) override { return absl::UnavailableError("down"); }
  const char* name() const override { return "broken"; }
};

struct CountingEncoder {
  std::atomic<int> calls{0};
  absl::Duration delay = absl::ZeroDuration();
  TileEncoder fn() {
    return [this](const HostTensor& tiles) -> absl::StatusOr<HostTensor> {
      ++calls;
      absl::SleepFor(delay);
      return Embeddings(static_cast<int>(tiles.shape[0]), tiles.bytes[0]);
    };
  }
};

TileSource Tiles(uint8_t seed) {
  return [seed]() -> absl::StatusOr<HostTensor> {
    HostTensor t(DType::kU8, {2, 4, 4, 3});
    t.bytes.assign(t.bytes.size(), seed);
    return t;
  };
}

TEST(Embedder, SecondRequestIsACacheHitWithoutEncoding) {
  MetricsRegistry registry;
  InMemoryEmbeddingCache cache(1 << 20);
  CountingEncoder encoder;
  Embedder embedder(encoder.fn(), &cache, &registry);
  auto first = embedder.Embed("key", Tiles(9));
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->source, v1::EMBEDDING_SOURCE_ENCODED);
  auto second = embedder.Embed("key", Tiles(9));
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(second->source, v1::EMBEDDING_SOURCE_CACHE);
  EXPECT_EQ(second->embeddings->bytes, first->embeddings->bytes);
  EXPECT_EQ(encoder.calls.load(), 1);
  EXPECT_EQ(registry.GetCounter("internvl_cache_hits_total", "")->value(), 1);
  EXPECT_EQ(registry.GetCounter("internvl_cache_misses_total", "")->value(), 1);
  EXPECT_EQ(registry.GetCounter("internvl_encodes_total", "")->value(), 1);
}

TEST(Embedder, CacheFailuresAreMissesNotErrors) {
  MetricsRegistry registry;
  BrokenCache cache;
  CountingEncoder encoder;
  Embedder embedder(encoder.fn(), &cache, &registry);
  for (int i = 0; i < 2; ++i) {
    auto r = embedder.Embed("key", Tiles(3));
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->source, v1::EMBEDDING_SOURCE_ENCODED);
  }
  EXPECT_EQ(encoder.calls.load(), 2);
  EXPECT_EQ(registry.GetCounter("internvl_cache_errors_total", "", {{"op", "get"}})->value(), 2);
  EXPECT_EQ(registry.GetCounter("internvl_cache_errors_total", "", {{"op", "put"}})->value(), 2);
}

TEST(Embedder, ConcurrentSameKeyEncodesOnceAndTileErrorsPropagate) {
  MetricsRegistry registry;
  InMemoryEmbeddingCache cache(1 << 20);
  CountingEncoder encoder;
  encoder.delay = absl::Milliseconds(200);
  Embedder embedder(encoder.fn(), &cache, &registry);
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&] { ok += embedder.Embed("same", Tiles(5)).ok(); });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 4);
  EXPECT_EQ(encoder.calls.load(), 1);

  auto bad =
      embedder.Embed("bad", [] { return absl::StatusOr<HostTensor>(absl::InvalidArgumentError("image 0: corrupt")); });
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(cache.Get("bad").value().has_value());
}

class RedisCacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto redis = testing::RedisServer::Start(::internvl::testing::TempDir());
    ASSERT_TRUE(redis.ok()) << redis.status();
    redis_ = std::move(*redis);
    options_.port = redis_->port();
    options_.ttl = absl::Seconds(120);
    options_.reconnect_backoff = absl::Milliseconds(200);
  }
  std::unique_ptr<testing::RedisServer> redis_;
  RedisCacheOptions options_;
};

TEST_F(RedisCacheTest, StoresWithTtlAndReadsBack) {
  RedisEmbeddingCache cache(options_);
  EXPECT_FALSE(cache.Get("internvl:emb:v1:x").value().has_value());
  ASSERT_TRUE(cache.Put("internvl:emb:v1:x", Embeddings(2, 8)).ok());
  auto got = cache.Get("internvl:emb:v1:x");
  ASSERT_TRUE(got.ok() && got->has_value()) << got.status();
  EXPECT_EQ((*got)->bytes, Embeddings(2, 8).bytes);
  EXPECT_EQ((*got)->shape, Embeddings(2, 8).shape);
  auto ttl = redis_->Command({"TTL", "internvl:emb:v1:x"});
  ASSERT_TRUE(ttl.ok());
  EXPECT_GT(std::stoi(*ttl), 100);
  EXPECT_LE(std::stoi(*ttl), 120);
}

// A Redis with requirepass (as deployed): only a cache with the password
// reads and writes; without it or with a wrong one every call is an error
// (a miss for the Embedder), never a hang.
TEST_F(RedisCacheTest, AuthWithThePasswordOnly) {
  ASSERT_TRUE(redis_->Command({"CONFIG", "SET", "requirepass", "s3cret-for-tests"}).ok());
  {
    RedisEmbeddingCache anonymous(options_);
    auto got = anonymous.Get("internvl:emb:v1:a");
    EXPECT_FALSE(got.ok());
    EXPECT_FALSE(anonymous.Put("internvl:emb:v1:a", Embeddings(1, 4)).ok());
  }
  {
    RedisCacheOptions wrong = options_;
    wrong.password = "not-the-password";
    RedisEmbeddingCache cache(wrong);
    auto got = cache.Get("internvl:emb:v1:a");
    ASSERT_FALSE(got.ok());
    EXPECT_THAT(std::string(got.status().message()), ::testing::HasSubstr("AUTH"));
  }
  RedisCacheOptions right = options_;
  right.password = "s3cret-for-tests";
  RedisEmbeddingCache cache(right);
  ASSERT_TRUE(cache.Put("internvl:emb:v1:a", Embeddings(1, 4)).ok());
  auto got = cache.Get("internvl:emb:v1:a");
  ASSERT_TRUE(got.ok() && got->has_value()) << got.status();
  EXPECT_EQ((*got)->bytes, Embeddings(1, 4).bytes);
}

TEST_F(RedisCacheTest, CorruptValueIsDataLossAndGetsDeleted) {
  RedisEmbeddingCache cache(options_);
  ASSERT_TRUE(redis_->Command({"SET", "k", "not an embedding"}).ok());
  EXPECT_EQ(cache.Get("k").status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(redis_->Command({"EXISTS", "k"}).value_or(""), "0");
}

TEST_F(RedisCacheTest, RedisKilledMidRunGivesFastErrorsThenMissesInEmbedder) {
  RedisEmbeddingCache cache(options_);
  MetricsRegistry registry;
  CountingEncoder encoder;
  Embedder embedder(encoder.fn(), &cache, &registry);
  ASSERT_EQ(embedder.Embed("k1", Tiles(1)).value().source, v1::EMBEDDING_SOURCE_ENCODED);
  ASSERT_EQ(embedder.Embed("k1", Tiles(1)).value().source, v1::EMBEDDING_SOURCE_CACHE);
  redis_->Stop();
  const absl::Time start = absl::Now();
  for (int i = 0; i < 5; ++i) {
    auto r = embedder.Embed("k1", Tiles(1));
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->source, v1::EMBEDDING_SOURCE_ENCODED);
  }
  // A dead loopback Redis is refused at once; the backoff keeps later calls
  // from even trying. Well under the command timeouts.
  EXPECT_LT(absl::Now() - start, absl::Seconds(1));
  EXPECT_GE(registry.GetCounter("internvl_cache_errors_total", "", {{"op", "get"}})->value(), 5);
  EXPECT_EQ(encoder.calls.load(), 6);
}

// A hung Redis (SIGSTOP: connections stay open, nothing answers) costs the
// first requests one command timeout each, then the breaker skips it: the
// other requests pay nothing, and once Redis is back one trial reopens it.
TEST_F(RedisCacheTest, HungRedisIsSkippedByTheCircuitBreakerThenUsedAgain) {
  options_.command_timeout = absl::Milliseconds(200);
  options_.breaker_failures = 2;
  options_.breaker_open_for = absl::Milliseconds(500);
  RedisEmbeddingCache cache(options_);
  ASSERT_TRUE(cache.Put("internvl:emb:v1:k", Embeddings(1, 8)).ok());
  ASSERT_TRUE(cache.Get("internvl:emb:v1:k").ok());
  redis_->Pause();
  std::vector<absl::Duration> costs;
  for (int i = 0; i < 20; ++i) {
    const absl::Time t = absl::Now();
    EXPECT_FALSE(cache.Get("internvl:emb:v1:k").ok());
    costs.push_back(absl::Now() - t);
  }
  EXPECT_EQ(cache.breaker_trips(), 1);
  // Two timeouts, then immediate refusals.
  for (size_t i = 2; i < costs.size(); ++i) EXPECT_LT(costs[i], absl::Milliseconds(5)) << "request " << i;
  redis_->Resume();
  absl::SleepFor(absl::Milliseconds(600));
  auto back = cache.Get("internvl:emb:v1:k");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_TRUE(back->has_value());
}

TEST(RedisAddress, ParsesHostPortAndRejectsGarbage) {
  RedisCacheOptions o;
  ASSERT_TRUE(ParseRedisAddress("redis.default.svc:6380", &o).ok());
  EXPECT_EQ(o.host, "redis.default.svc");
  EXPECT_EQ(o.port, 6380);
  EXPECT_FALSE(ParseRedisAddress("nohost", &o).ok());
  EXPECT_FALSE(ParseRedisAddress("h:99999", &o).ok());
}

}  // namespace
}  // namespace internvl::services
