#include "services/common/flags.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace internvl::services {
namespace {

TEST(NormalizedArgs, RewritesDashesInFlagNamesOnly) {
  const char* raw[] = {
      "bin", "--metrics-port=9090", "--max-image-bytes", "10", "--model", "/a-b/c-d", "-cache-ttl-seconds=5",
      "--",  "--not-a-flag"};
  NormalizedArgs args(9, const_cast<char**>(raw));
  ASSERT_EQ(args.argc(), 9);
  std::vector<std::string> out(args.argv(), args.argv() + args.argc());
  EXPECT_THAT(out, ::testing::ElementsAre("bin", "--metrics_port=9090", "--max_image_bytes", "10", "--model",
                                          "/a-b/c-d", "-cache_ttl_seconds=5", "--", "--not-a-flag"));
  EXPECT_EQ(args.argv()[9], nullptr);
}

}  // namespace
}  // namespace internvl::services
