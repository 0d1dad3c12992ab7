#include "services/common/server.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "services/common/testing/harness.h"

namespace internvl::services {
namespace {

TEST(GrpcServer, ReportsServingPerServiceAndStopsOnShutdown) {
  auto server = GrpcServer::Start(ListenOn("127.0.0.1:0"), {}, {"internvl.v1.Test"});
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string target = "127.0.0.1:" + std::to_string((*server)->port());
  EXPECT_EQ(testing::HealthCheck(target, "").value_or("error"), "SERVING");
  EXPECT_EQ(testing::HealthCheck(target, "internvl.v1.Test").value_or("error"), "SERVING");
  // Unknown names are NOT_FOUND (an error), not SERVING.
  EXPECT_FALSE(testing::HealthCheck(target, "internvl.v1.Other").ok());
  (*server)->Shutdown(absl::Seconds(1));
  EXPECT_FALSE((*server)->serving());
  EXPECT_FALSE(testing::HealthCheck(target, "", absl::Milliseconds(300)).ok());
}

TEST(GrpcServer, BusyAddressIsUnavailable) {
  auto first = GrpcServer::Start(ListenOn("127.0.0.1:0"), {}, {});
  ASSERT_TRUE(first.ok());
  auto second = GrpcServer::Start(ListenOn("127.0.0.1:" + std::to_string((*first)->port())), {}, {});
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace internvl::services
