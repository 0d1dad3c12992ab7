#include "services/common/work_queue.h"

#include <atomic>

#include "absl/synchronization/notification.h"
#include "core/status.h"
#include "gtest/gtest.h"
#include "services/common/stream_slots.h"

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
    const absl::Status full = queue.Submit([&] { ++ran; });
    EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted);
    EXPECT_TRUE(IsBusy(full)) << full;  // (HTTP 429: a retry may pass)
    release.Notify();
  }  // the destructor drains what was queued
  EXPECT_EQ(ran.load(), 3);
  EXPECT_EQ(depth->value(), 0);
}

TEST(StreamSlots, RefusesPastItsCapAsBusyAndFreesOnRelease) {
  StreamSlots slots(2, "--max_concurrent_streams");
  ASSERT_TRUE(slots.Acquire().ok());
  ASSERT_TRUE(slots.Acquire().ok());
  const absl::Status full = slots.Acquire();
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(IsBusy(full)) << full;
  EXPECT_NE(full.message().find("--max_concurrent_streams"), absl::string_view::npos) << full;
  EXPECT_EQ(slots.open(), 2);
  slots.Release();
  EXPECT_TRUE(slots.Acquire().ok());
  EXPECT_EQ(slots.open(), 2);
}

}  // namespace
}  // namespace internvl::services
