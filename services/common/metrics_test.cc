#include "services/common/metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "services/common/metrics_http.h"
#include "services/common/server.h"
#include "services/common/testing/harness.h"

namespace internvl::services {
namespace {

using ::testing::HasSubstr;

TEST(MetricsRegistry, RendersCountersAndGaugesInTextFormat) {
  MetricsRegistry registry;
  registry.GetCounter("x_total", "Things done", {{"method", "Encode"}, {"code", "OK"}})->Increment(3);
  registry.GetGauge("queue_depth", "Waiting tasks")->Set(2);
  const std::string text = registry.Render();
  EXPECT_EQ(text,
            "# HELP queue_depth Waiting tasks\n# TYPE queue_depth gauge\nqueue_depth 2\n"
            "# HELP x_total Things done\n# TYPE x_total counter\nx_total{code=\"OK\",method=\"Encode\"} 3\n");
}

TEST(MetricsRegistry, HistogramBucketsAreCumulativeWithInfSumAndCount) {
  MetricsRegistry registry;
  Histogram* h = registry.GetHistogram("lat_seconds", "Latency", {0.1, 1}, {{"m", "a"}});
  h->Observe(0.05);
  h->Observe(0.1);  // on the bound: counts in le="0.1"
  h->Observe(0.5);
  h->Observe(7);
  const std::string text = registry.Render();
  EXPECT_THAT(text, HasSubstr("# TYPE lat_seconds histogram\n"));
  EXPECT_THAT(text, HasSubstr("lat_seconds_bucket{m=\"a\",le=\"0.10000000000000001\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("lat_seconds_bucket{m=\"a\",le=\"1\"} 3\n"));
  EXPECT_THAT(text, HasSubstr("lat_seconds_bucket{m=\"a\",le=\"+Inf\"} 4\n"));
  EXPECT_THAT(text, HasSubstr("lat_seconds_sum{m=\"a\"} 7.6500000000000004\n"));
  EXPECT_THAT(text, HasSubstr("lat_seconds_count{m=\"a\"} 4\n"));
}

TEST(MetricsRegistry, EscapesLabelValuesAndSameLabelsShareASeries) {
  MetricsRegistry registry;
  Counter* a = registry.GetCounter("c_total", "h", {{"k", "a\"b\\c\nd"}});
  Counter* b = registry.GetCounter("c_total", "h", {{"k", "a\"b\\c\nd"}});
  EXPECT_EQ(a, b);
  a->Increment();
  EXPECT_THAT(registry.Render(), HasSubstr("c_total{k=\"a\\\"b\\\\c\\nd\"} 1\n"));
}

TEST(MetricsRegistry, ConcurrentIncrementsAreNotLost) {
  MetricsRegistry registry;
  Counter* c = registry.GetCounter("n_total", "h");
  Histogram* h = registry.GetHistogram("h_seconds", "h", DefaultLatencyBuckets());
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 10000; ++i) {
        c->Increment();
        h->Observe(0.003);
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(c->value(), 40000);
  EXPECT_EQ(h->snapshot().count, 40000u);
}

TEST(RpcMetrics, InFlightSumsOverServicesAndAdmitStopsWhenDraining) {
  MetricsRegistry registry;
  EXPECT_EQ(registry.GaugeSum("internvl_in_flight_requests"), 0);
  RpcMetrics a(&registry, "a"), b(&registry, "b");
  a.in_flight()->Add(2);
  b.in_flight()->Add(1);
  registry.GetGauge("other", "h")->Set(5);
  EXPECT_EQ(registry.GaugeSum("internvl_in_flight_requests"), 3);
  EXPECT_TRUE(a.Admit().ok());
  registry.StopAdmitting();
  for (RpcMetrics* m : {&a, &b}) {
    EXPECT_EQ(m->Admit().code(), absl::StatusCode::kUnavailable);
    EXPECT_THAT(m->Admit().message(), HasSubstr("shutting down"));
  }
}

TEST(MetricsHttpServer, ServesMetricsHealthzAnd404) {
  MetricsRegistry registry;
  registry.GetCounter("served_total", "h")->Increment(5);
  bool healthy = true;
  auto server = MetricsHttpServer::Start("127.0.0.1", 0, &registry, [&] { return healthy; });
  ASSERT_TRUE(server.ok()) << server.status();
  auto body = testing::HttpGet((*server)->port(), "/metrics");
  ASSERT_TRUE(body.ok()) << body.status();
  EXPECT_EQ(testing::MetricValue(*body, "served_total"), 5);
  EXPECT_TRUE(testing::HttpGet((*server)->port(), "/healthz").ok());
  healthy = false;
  EXPECT_THAT(testing::HttpGet((*server)->port(), "/healthz").status().message(), HasSubstr("503"));
  EXPECT_THAT(testing::HttpGet((*server)->port(), "/nope").status().message(), HasSubstr("404"));
}

// A client that connects and sends nothing (or half a request) used to hold
// the only serving thread for its read timeout: scrapes and probes waited.
TEST(MetricsHttpServer, SlowClientsDoNotStallScrapes) {
  MetricsRegistry registry;
  registry.GetCounter("served_total", "h")->Increment(1);
  auto server = MetricsHttpServer::Start("127.0.0.1", 0, &registry);
  ASSERT_TRUE(server.ok()) << server.status();
  std::vector<int> stuck;
  for (int i = 0; i < 3; ++i) {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>((*server)->port()));
    ::inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    ::send(fd, "GET /met", 8, 0);  // and nothing more
    stuck.push_back(fd);
  }
  const absl::Time start = absl::Now();
  auto body = testing::HttpGet((*server)->port(), "/metrics");
  ASSERT_TRUE(body.ok()) << body.status();
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(500));
  for (int fd : stuck) ::close(fd);
}

TEST(RunServer, MetricsFollowTheListenHost) {
  RunOptions o;
  o.grpc.listen = "127.0.0.1:0";
  EXPECT_EQ(MetricsHost(o), "127.0.0.1");
  o.grpc.listen = "localhost:50050";
  EXPECT_EQ(MetricsHost(o), "127.0.0.1");
  o.grpc.listen = "0.0.0.0:50050";
  EXPECT_EQ(MetricsHost(o), "0.0.0.0");
  o.grpc.listen = "[::]:50050";
  EXPECT_EQ(MetricsHost(o), "0.0.0.0");
  o.metrics_host = "10.1.2.3";
  EXPECT_EQ(MetricsHost(o), "10.1.2.3");
}

}  // namespace
}  // namespace internvl::services
