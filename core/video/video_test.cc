#include "core/video/video.h"

#include <optional>
#include <vector>

#include "gtest/gtest.h"

namespace internvl::video {
namespace {

std::vector<int64_t> Indices(std::optional<TimeBound> bound, double fps, int64_t max_frame, int segments) {
  auto r = GetFrameIndices(bound, fps, max_frame, 0, segments);
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *r : std::vector<int64_t>{};
}

TEST(GetFrameIndices, UnboundedTakesTheMiddleOfEachSegment) {
  EXPECT_EQ(Indices(std::nullopt, 25, 124, 8), (std::vector<int64_t>{7, 23, 38, 53, 69, 85, 100, 115}));
}
}  // namespace
}  // namespace internvl::video
