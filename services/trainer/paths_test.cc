#include "services/trainer/paths.h"

#include <sys/stat.h>
#include <unistd.h>

#include <fstream>

#include "core/testing/fixtures.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace internvl::services::trainer {
namespace {

using ::testing::HasSubstr;

class ConfinePathTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string tmp = ::internvl::testing::TempDir();
    root_ = *CanonicalDir(tmp, "tmp") + "/root";
    outside_ = *CanonicalDir(tmp, "tmp") + "/outside";
    ASSERT_EQ(::mkdir(root_.c_str(), 0755), 0);
    ASSERT_EQ(::mkdir(outside_.c_str(), 0755), 0);
    ASSERT_EQ(::mkdir((root_ + "/a").c_str(), 0755), 0);
    std::ofstream(root_ + "/file") << "x";
  }
  absl::StatusOr<std::string> Confine(const std::string& rel, Existence e = Existence::kMayBeMissing) {
    return ConfinePath(root_, rel, "output_dir", "--output-root", e);
  }
  std::string root_, outside_;
};

TEST_F(ConfinePathTest, RelativePathsResolveUnderTheRoot) {
  EXPECT_EQ(Confine("a").value(), root_ + "/a");
  EXPECT_EQ(Confine("a/new/deeper").value(), root_ + "/a/new/deeper");
  EXPECT_EQ(Confine("./a//b/").value(), root_ + "/a/b");
  EXPECT_EQ(Confine("fresh").value(), root_ + "/fresh");
}

TEST_F(ConfinePathTest, AbsoluteAndDotDotPathsAreRefused) {
  for (const std::string bad : {"/etc", "/tmp/x", "..", "../outside", "a/../../outside", "a/..", "a/../a"}) {
    auto r = Confine(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_THAT(Confine("/etc").status().message(), HasSubstr("relative"));
  EXPECT_THAT(Confine("a/../b").status().message(), HasSubstr(".."));
}

TEST_F(ConfinePathTest, TheRootItselfAndEmptyPathsAreRefused) {
  EXPECT_FALSE(Confine("").ok());
  EXPECT_FALSE(Confine(".").ok());
  EXPECT_FALSE(Confine("./").ok());
  ASSERT_EQ(::symlink(root_.c_str(), (root_ + "/self").c_str()), 0);
  auto r = Confine("self");
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("itself"));
}

TEST_F(ConfinePathTest, SymlinksLeavingTheRootAreRefusedAtAnyDepth) {
  ASSERT_EQ(::symlink(outside_.c_str(), (root_ + "/escape").c_str()), 0);
  ASSERT_EQ(::symlink("../../outside", (root_ + "/a/up").c_str()), 0);
  ASSERT_EQ(::symlink((root_ + "/escape").c_str(), (root_ + "/chain").c_str()), 0);
  for (const std::string bad : {"escape", "escape/sub", "a/up", "a/up/x/y", "chain/new"}) {
    auto r = Confine(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(r.status().message(), HasSubstr("symlink")) << bad;
  }
}

TEST_F(ConfinePathTest, SymlinksStayingInsideTheRootAreFollowed) {
  ASSERT_EQ(::symlink("a", (root_ + "/alias").c_str()), 0);
  EXPECT_EQ(Confine("alias/run1").value(), root_ + "/a/run1");
}

TEST_F(ConfinePathTest, MustExistAndDirectoryComponents) {
  EXPECT_EQ(Confine("a", Existence::kMustExist).value(), root_ + "/a");
  auto missing = Confine("nope", Existence::kMustExist);
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(missing.status().message(), HasSubstr("does not exist"));
  auto through_file = Confine("file/below");
  ASSERT_FALSE(through_file.ok());
  EXPECT_THAT(through_file.status().message(), HasSubstr("not a directory"));
}

TEST(IsWithin, ComparesWholeComponents) {
  EXPECT_TRUE(IsWithin("/r", "/r"));
  EXPECT_TRUE(IsWithin("/r/x", "/r"));
  EXPECT_FALSE(IsWithin("/rx", "/r"));
  EXPECT_FALSE(IsWithin("/", "/r"));
  EXPECT_TRUE(IsWithin("/anything", "/"));
}

}  // namespace
}  // namespace internvl::services::trainer
