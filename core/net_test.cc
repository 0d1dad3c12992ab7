#include "core/net.h"

#include <unordered_set>

#include "gtest/gtest.h"

namespace internvl {
namespace {

// Children given a port bind it only later (after loading a model): a
// process must never hand out one port twice, or two children collide.
TEST(PickFreeLoopbackPort, NeverRepeatsAPortInOneProcess) {
  std::unordered_set<int> seen;
  for (int i = 0; i < 2000; ++i) {
    auto port = PickFreeLoopbackPort();
    ASSERT_TRUE(port.ok()) << port.status();
    EXPECT_GT(*port, 0);
    EXPECT_TRUE(seen.insert(*port).second) << "port " << *port << " handed out twice (pick " << i << ")";
  }
}

}  // namespace
}  // namespace internvl
