#include "core/model_path.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "core/testing/fixtures.h"
#include "gtest/gtest.h"

namespace internvl {
namespace {
namespace fs = std::filesystem;

TEST(ResolveModelPath, LocalDirectoryIsUsedAsIs) {
  std::string dir = testing::TempDir();
  auto p = ResolveModelPath(dir);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(*p, dir);
}

TEST(ResolveModelPath, HubIdResolvesThroughRefsAndSnapshots) {
  std::string home = testing::TempDir();
  setenv("HF_HOME", home.c_str(), 1);
  unsetenv("HF_HUB_CACHE");
  fs::path repo = fs::path(home) / "hub" / "models--OpenGVLab--InternVL2-1B";
  const std::string sha = "0123456789abcdef0123456789abcdef01234567";
  fs::create_directories(repo / "refs");
  fs::create_directories(repo / "snapshots" / sha);
  std::ofstream(repo / "refs" / "main") << sha << "\n";
  std::ofstream(repo / "snapshots" / sha / "config.json") << "{}";
  auto p = ResolveModelPath("OpenGVLab/InternVL2-1B");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(*p, (repo / "snapshots" / sha).string());
  auto by_sha = ResolveModelPath("OpenGVLab/InternVL2-1B@" + sha);
  ASSERT_TRUE(by_sha.ok()) << by_sha.status();
  auto missing_rev = ResolveModelPath("OpenGVLab/InternVL2-1B@dev");
  EXPECT_EQ(missing_rev.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing_rev.status().message().find("refs/dev"), std::string::npos);
  auto missing = ResolveModelPath("OpenGVLab/InternVL2-8B");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  unsetenv("HF_HOME");
}

TEST(ResolveModelPath, RejectsNonIds) {
  EXPECT_EQ(ResolveModelPath("/no/such/dir").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ResolveModelPath("a/b/c").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ResolveModelPath("../x").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace internvl
