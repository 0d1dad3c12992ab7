#include "services/common/work_queue.h"

#include <atomic>

#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"

namespace internvl::services {
namespace {

TEST(WorkQueue, RefusesWhenFullAndReportsDepth) {
  MetricsRegistry registry;
  Gauge* depth = registry.GetGauge("depth", "h");
  absl::Notification release;
  absl::Notification started;
  std::atomic<int> ran{0};
  {
    WorkQueue queue(1, 2, depth);
    ASSERT_TRUE(queue
                    .Submit([&] {
                      started.Notify();
                      release.WaitForNotification();
                      ++ran;
                    })
                    .ok());
    started.WaitForNotification();  // the worker is busy; the next two wait
    ASSERT_TRUE(queue.Submit([&] { ++ran; }).ok());
    ASSERT_TRUE(queue.Submit([&] { ++ran; }).ok());
    EXPECT_EQ(depth->value(), 2);
    EXPECT_EQ(queue.Submit([&] { ++ran; }).code(), absl::StatusCode::kResourceExhausted);
    release.Notify();
  }  // the destructor drains what was queued
  EXPECT_EQ(ran.load(), 3);
  EXPECT_EQ(depth->value(), 0);
}

}  // namespace
}  // namespace internvl::services
