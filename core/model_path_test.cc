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

TEST(ParseHfModelId, SplitsIdAndRevision) {
  auto plain = ParseHfModelId("OpenGVLab/InternVL2-1B");
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(plain->repo_id, "OpenGVLab/InternVL2-1B");
  EXPECT_EQ(plain->revision, "main");
  auto pinned = ParseHfModelId("OpenGVLab/InternVL2-1B@v1.0");
  ASSERT_TRUE(pinned.ok());
  EXPECT_EQ(pinned->revision, "v1.0");
  auto pr = ParseHfModelId("OpenGVLab/InternVL2-1B@refs/pr/3");
  ASSERT_TRUE(pr.ok());
  EXPECT_EQ(pr->revision, "refs/pr/3");
  for (const char* bad : {"InternVL2-1B", "a/b/c", "/x", "a/", "../x", "a/b@", "a/b@../../x", "a b/c"})
    EXPECT_EQ(ParseHfModelId(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
}

TEST(HfCache, RepoFolderAndCommitHashes) {
  EXPECT_EQ(HfRepoCacheDir("OpenGVLab/InternVL2-1B", "/c"), "/c/models--OpenGVLab--InternVL2-1B");
  EXPECT_TRUE(IsCommitHash("0123456789abcdef0123456789abcdef01234567"));
  EXPECT_FALSE(IsCommitHash("main"));
  EXPECT_FALSE(IsCommitHash("0123456789abcdef0123456789abcdef0123456z"));
}

TEST(HfCache, CacheDirAndOfflineComeFromTheEnvironment) {
  setenv("HF_HOME", "/h", 1);
  unsetenv("HF_HUB_CACHE");
  EXPECT_EQ(HfHubCacheDir(), "/h/hub");
  setenv("HF_HUB_CACHE", "/c", 1);
  EXPECT_EQ(HfHubCacheDir(), "/c");
  unsetenv("HF_HUB_CACHE");
  unsetenv("HF_HOME");
  for (const char* on : {"1", "ON", "yes", "true"}) {
    setenv("HF_HUB_OFFLINE", on, 1);
    EXPECT_TRUE(HfHubOffline()) << on;
  }
  setenv("HF_HUB_OFFLINE", "0", 1);
  EXPECT_FALSE(HfHubOffline());
  unsetenv("HF_HUB_OFFLINE");
  EXPECT_FALSE(HfHubOffline());
}

TEST(HfCache, MissingRefSuggestsDownloading) {
  std::string home = testing::TempDir();
  setenv("HF_HUB_CACHE", home.c_str(), 1);
  auto missing = ResolveModelPath("OpenGVLab/InternVL2-1B");
  unsetenv("HF_HUB_CACHE");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("internvl download --model OpenGVLab/InternVL2-1B"), std::string::npos)
      << missing.status();
}

}  // namespace
}  // namespace internvl
