// Loading models by name against a hub on loopback that speaks the real hub's
// URL scheme and headers (core/hub/fake_hub_server.h): the cache layout the
// Python huggingface_hub writes, offline use, resume, checksums and errors.
#include "core/hub/hub_download.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/files.h"
#include "core/hub/digest.h"
#include "core/hub/fake_hub_server.h"
#include "core/model_path.h"
#include "core/testing/fixtures.h"
#include "gtest/gtest.h"

namespace internvl::hub {
namespace {
namespace fs = std::filesystem;
using testing::FakeHubServer;

constexpr char kRepo[] = "OpenGVLab/InternVL2-1B";
constexpr char kCommit[] = "4f6c2e8a1b3d5f7092a4c6e8b0d2f4a6c8e0b2d4";
constexpr char kShardedRepo[] = "OpenGVLab/InternVL2-Sharded";
constexpr char kShardedCommit[] = "aaaabbbbccccddddeeeeffff0000111122223333";

std::string RandomBytes(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng() & 0xff);
  return s;
}

// The tiny Qwen2 fixture's files when present (INTERNVL_REQUIRE_FIXTURES
// decides), else small generated ones of the same names.
std::vector<FakeHubServer::File> ModelFiles() {
  std::vector<FakeHubServer::File> files;
  if (auto dir = internvl::testing::FixturesDir()) {
    const fs::path tiny = fs::path(*dir) / "tiny-qwen2";
    for (const char* name : {"config.json", "model.safetensors", "vocab.json", "merges.txt", "tokenizer_config.json"}) {
      auto content = ReadFile((tiny / name).string());
      if (content.ok()) files.push_back({name, *content, absl::EndsWith(name, ".safetensors")});
    }
    if (files.size() == 5) return files;
    files.clear();
  }
  files.push_back({"config.json", R"({"model_type": "qwen2", "hidden_size": 8})", false});
  files.push_back({"model.safetensors", RandomBytes(700 * 1024, 1), true});
  files.push_back({"vocab.json", R"({"a": 0, "b": 1})", false});
  files.push_back({"merges.txt", "#version: 0.2\na b\n", false});
  files.push_back({"tokenizer_config.json", R"({"model_max_length": 32})", false});
  return files;
}

std::string FileContent(const std::vector<FakeHubServer::File>& files, const std::string& name) {
  for (const auto& f : files)
    if (f.name == name) return f.content;
  return "";
}

class HubDownload : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* v : {"http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"})
      unsetenv(v);
    files_ = ModelFiles();
    // Files the hub has that loading a model must not fetch.
    auto served = files_;
    served.push_back({"README.md", "# tiny\n", false});
    served.push_back({"pytorch_model.bin", RandomBytes(64 * 1024, 2), true});
    served.push_back({"modeling_internvl_chat.py", "# remote code\n", false});
    std::vector<FakeHubServer::File> sharded = {
        {"config.json", R"({"model_type": "qwen2"})", false},
        {"model.safetensors.index.json",
         R"({"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors",
             "b": "model-00002-of-00002.safetensors", "c": "model-00001-of-00002.safetensors"}})",
         false},
        {"model-00001-of-00002.safetensors", RandomBytes(50000, 3), true},
        {"model-00002-of-00002.safetensors", RandomBytes(40000, 4), true},
        {"tokenizer.model", RandomBytes(3000, 5), true},
    };
    auto server = FakeHubServer::Start({{kRepo, kCommit, served}, {kShardedRepo, kShardedCommit, sharded}});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    cache_ = internvl::testing::TempDir();
    options_.endpoint = server_->endpoint();
    options_.cache_dir = cache_;
    options_.stall_timeout_s = 5;
  }

  absl::StatusOr<std::string> Load(const std::string& revision = "main") {
    return EnsureModelDownloaded(kRepo, revision, options_);
  }
  fs::path RepoDir() const { return fs::path(cache_) / "models--OpenGVLab--InternVL2-1B"; }
  fs::path Blob(const std::string& name) const {
    const std::string content = FileContent(files_, name);
    return RepoDir() / "blobs" / (name == "model.safetensors" ? Sha256Hex(content) : GitBlobSha1Hex(content));
  }
  int CountRequests(const std::string& method, const std::string& path_part) const {
    int n = 0;
    for (const auto& r : server_->requests())
      if (r.method == method && absl::StrContains(r.path, path_part)) ++n;
    return n;
  }

  std::vector<FakeHubServer::File> files_;
  std::unique_ptr<FakeHubServer> server_;
  std::string cache_;
  HubOptions options_;
};

TEST_F(HubDownload, FirstLoadWritesTheHuggingfaceHubCacheLayout) {
  auto snapshot = Load();
  ASSERT_TRUE(snapshot.ok()) << snapshot.status();
  EXPECT_EQ(*snapshot, (RepoDir() / "snapshots" / kCommit).string());
  // refs/main holds the bare commit hash (no newline), as huggingface_hub writes it.
  EXPECT_EQ(*ReadFile((RepoDir() / "refs" / "main").string()), kCommit);
  for (const auto& f : files_) {
    const fs::path link = RepoDir() / "snapshots" / kCommit / f.name;
    ASSERT_TRUE(fs::is_symlink(link)) << link;
    // Relative links into blobs/, named by sha256 (LFS) or git blob sha1.
    EXPECT_EQ(fs::read_symlink(link).string(), (fs::path("../../blobs") / Blob(f.name).filename()).string());
    EXPECT_EQ(*ReadFile(link.string()), f.content) << f.name;
  }
  EXPECT_EQ(Blob("model.safetensors").filename().string().size(), 64u);
  EXPECT_EQ(Blob("config.json").filename().string().size(), 40u);
  // Only what a model needs: no README, .bin or remote code; the LFS file came via the "CDN" redirect.
  EXPECT_EQ(CountRequests("GET", "README.md") + CountRequests("HEAD", "README.md"), 0);
  EXPECT_EQ(CountRequests("HEAD", "pytorch_model.bin") + CountRequests("HEAD", ".py"), 0);
  EXPECT_EQ(CountRequests("GET", "/api/models/OpenGVLab/InternVL2-1B/revision/main"), 1);
  EXPECT_EQ(CountRequests("HEAD", "/resolve/"), static_cast<int>(files_.size()));
  EXPECT_EQ(CountRequests("GET", "/lfs/"), 1);
  for (const auto& r : server_->requests()) EXPECT_TRUE(r.authorization.empty()) << "no token set";
  // The cache-only resolver (internvl_base) finds the same snapshot.
  setenv("HF_HUB_CACHE", cache_.c_str(), 1);
  auto cached = ResolveModelPath(kRepo);
  unsetenv("HF_HUB_CACHE");
  ASSERT_TRUE(cached.ok()) << cached.status();
  EXPECT_EQ(*cached, *snapshot);
}

TEST_F(HubDownload, SecondLoadIsOneMetadataRequestOrNoneOffline) {
  ASSERT_TRUE(Load().ok());
  server_->ClearRequests();
  // Online, everything cached: exactly the API lookup of what "main" points to.
  auto again = Load();
  ASSERT_TRUE(again.ok()) << again.status();
  ASSERT_EQ(server_->requests().size(), 1u);
  EXPECT_EQ(server_->requests()[0].path, "/api/models/OpenGVLab/InternVL2-1B/revision/main");
  server_->ClearRequests();
  // A commit hash is immutable: no request at all.
  ASSERT_TRUE(Load(kCommit).ok());
  EXPECT_TRUE(server_->requests().empty());
  // HF_HUB_OFFLINE=1 (through HubOptions::FromEnv, as the CLI and services get it): no request.
  setenv("HF_HUB_OFFLINE", "1", 1);
  setenv("HF_HUB_CACHE", cache_.c_str(), 1);
  setenv("HF_ENDPOINT", options_.endpoint.c_str(), 1);
  auto offline = ResolveOrDownloadModel(kRepo);
  unsetenv("HF_HUB_OFFLINE");
  unsetenv("HF_HUB_CACHE");
  unsetenv("HF_ENDPOINT");
  ASSERT_TRUE(offline.ok()) << offline.status();
  EXPECT_EQ(*offline, *again);
  EXPECT_TRUE(server_->requests().empty());
}

TEST_F(HubDownload, OfflineWithMissingFilesNamesTheFileAndTheVariable) {
  options_.offline = true;
  auto none = Load();
  EXPECT_EQ(none.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(none.status().message(), "HF_HUB_OFFLINE")) << none.status();
  EXPECT_TRUE(absl::StrContains(none.status().message(), "refs/main")) << none.status();
  options_.offline = false;
  ASSERT_TRUE(Load().ok());
  fs::remove(RepoDir() / "snapshots" / kCommit / "model.safetensors");
  options_.offline = true;
  server_->ClearRequests();
  auto partial = Load();
  EXPECT_EQ(partial.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(partial.status().message(), "model.safetensors")) << partial.status();
  EXPECT_TRUE(absl::StrContains(partial.status().message(), "HF_HUB_OFFLINE")) << partial.status();
  EXPECT_TRUE(server_->requests().empty());
  // Online again, the blob is still there: the link is restored without a GET.
  options_.offline = false;
  server_->ClearRequests();
  ASSERT_TRUE(Load().ok());
  EXPECT_EQ(CountRequests("GET", "/lfs/"), 0);
  EXPECT_EQ(CountRequests("HEAD", "model.safetensors"), 1);
}

TEST_F(HubDownload, InterruptedDownloadResumesWithRange) {
  const std::string weights = FileContent(files_, "model.safetensors");
  const int64_t cut = static_cast<int64_t>(weights.size() / 3);
  server_->cut_body_after = cut;
  auto first = Load();
  EXPECT_EQ(first.status().code(), absl::StatusCode::kUnavailable) << first.status();
  EXPECT_TRUE(absl::StrContains(first.status().message(), "run again to resume")) << first.status();
  const fs::path incomplete = Blob("model.safetensors").string() + ".incomplete";
  ASSERT_TRUE(fs::exists(incomplete));
  EXPECT_EQ(static_cast<int64_t>(fs::file_size(incomplete)), cut);
  EXPECT_FALSE(fs::exists(RepoDir() / "refs" / "main")) << "refs only once the snapshot is complete";

  server_->cut_body_after = -1;
  server_->ClearRequests();
  auto second = Load();
  ASSERT_TRUE(second.ok()) << second.status();
  bool resumed = false;
  for (const auto& r : server_->requests())
    if (r.method == "GET" && absl::StartsWith(r.path, "/lfs/")) {
      EXPECT_EQ(r.range, absl::StrCat("bytes=", cut, "-"));
      resumed = true;
    }
  EXPECT_TRUE(resumed);
  EXPECT_FALSE(fs::exists(incomplete));
  EXPECT_EQ(*ReadFile((fs::path(*second) / "model.safetensors").string()), weights);
}

TEST_F(HubDownload, ServerIgnoringRangeRestartsFromZero) {
  const std::string weights = FileContent(files_, "model.safetensors");
  server_->cut_body_after = static_cast<int64_t>(weights.size() / 2);
  ASSERT_FALSE(Load().ok());
  server_->cut_body_after = -1;
  server_->ignore_range = true;
  auto second = Load();
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(*ReadFile((fs::path(*second) / "model.safetensors").string()), weights);
}

TEST_F(HubDownload, CorruptedBodyIsDataLossAndTheDownloadIsDeleted) {
  server_->corrupt_body = true;
  auto bad = Load();
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kDataLoss) << bad.status();
  EXPECT_TRUE(absl::StrContains(bad.status().message(), "sha256")) << bad.status();
  EXPECT_FALSE(fs::exists(Blob("model.safetensors")));
  EXPECT_FALSE(fs::exists(Blob("model.safetensors").string() + ".incomplete"));
  server_->corrupt_body = false;
  auto good = Load();
  ASSERT_TRUE(good.ok()) << good.status();
}

TEST_F(HubDownload, CorruptedPartialFileIsDetectedAfterResume) {
  // A partial file from an earlier run that is not a prefix of the real content.
  const fs::path blob = Blob("model.safetensors");
  fs::create_directories(blob.parent_path());
  std::ofstream(blob.string() + ".incomplete") << "garbage that is not the start of the file";
  auto bad = Load();
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kDataLoss) << bad.status();
  EXPECT_FALSE(fs::exists(blob.string() + ".incomplete"));
  ASSERT_TRUE(Load().ok());
}

TEST_F(HubDownload, UnknownRepoRevisionAndServerErrors) {
  auto repo = EnsureModelDownloaded("OpenGVLab/NoSuchModel", "main", options_);
  EXPECT_EQ(repo.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(repo.status().message(), "OpenGVLab/NoSuchModel not found")) << repo.status();
  auto rev = Load("no-such-branch");
  EXPECT_EQ(rev.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(rev.status().message(), "no revision 'no-such-branch'")) << rev.status();
  server_->force_status = 500;
  auto down = Load();
  EXPECT_EQ(down.status().code(), absl::StatusCode::kUnavailable) << down.status();
  server_->force_status = 404;
  EXPECT_EQ(Load().status().code(), absl::StatusCode::kNotFound);
  auto bad_id = ResolveOrDownloadModel("not a model id", options_);
  EXPECT_EQ(bad_id.status().code(), absl::StatusCode::kNotFound);
}

TEST_F(HubDownload, GatedRepoAsksForHfToken) {
  server_->gated = true;
  auto denied = Load();
  EXPECT_EQ(denied.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(absl::StrContains(denied.status().message(), "HF_TOKEN")) << denied.status();
  EXPECT_TRUE(absl::StrContains(denied.status().message(), "gated")) << denied.status();
  options_.token = "wrong";
  auto wrong = Load();
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(absl::StrContains(wrong.status().message(), "no access")) << wrong.status();
  // HF_TOKEN through the environment, as the CLI reads it.
  setenv("HF_TOKEN", server_->token.c_str(), 1);
  options_.token = HubOptions::FromEnv().token;
  unsetenv("HF_TOKEN");
  server_->ClearRequests();
  auto ok = Load();
  ASSERT_TRUE(ok.ok()) << ok.status();
  for (const auto& r : server_->requests())
    if (!absl::StartsWith(r.path, "/lfs/")) {
      EXPECT_EQ(r.authorization, "Bearer hf_test_token") << r.path;
    }
}

TEST_F(HubDownload, PrivateRepoWithoutTokenIsPermissionDenied) {
  server_->force_status = 401;
  auto denied = Load();
  EXPECT_EQ(denied.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(absl::StrContains(denied.status().message(), "set HF_TOKEN")) << denied.status();
}

TEST_F(HubDownload, DiskFullIsResourceExhausted) {
  // The partial download's path leads to /dev/full: every write fails with ENOSPC.
  if (!fs::exists("/dev/full")) GTEST_SKIP() << "no /dev/full";
  const fs::path blob = Blob("model.safetensors");
  fs::create_directories(blob.parent_path());
  fs::create_symlink("/dev/full", blob.string() + ".incomplete");
  auto full = Load();
  EXPECT_EQ(full.status().code(), absl::StatusCode::kResourceExhausted) << full.status();
  EXPECT_TRUE(absl::StrContains(full.status().message(), "disk full")) << full.status();
}

TEST_F(HubDownload, StalledTransferIsUnavailableAndResumable) {
  server_->slow_body_ms = 2500;  // 16 KiB, then silence longer than the stall timeout
  options_.stall_timeout_s = 1;
  auto stalled = Load();
  EXPECT_EQ(stalled.status().code(), absl::StatusCode::kUnavailable) << stalled.status();
  const fs::path incomplete = Blob("model.safetensors").string() + ".incomplete";
  ASSERT_TRUE(fs::exists(incomplete));
  EXPECT_GT(fs::file_size(incomplete), 0u);
  server_->slow_body_ms = 0;
  ASSERT_TRUE(Load().ok());
}

TEST_F(HubDownload, UnreachableHubFallsBackToACompleteCache) {
  ASSERT_TRUE(Load().ok());
  options_.endpoint = "http://127.0.0.1:1";  // nothing listens there
  auto cached = Load();
  ASSERT_TRUE(cached.ok()) << cached.status();
  EXPECT_EQ(*cached, (RepoDir() / "snapshots" / kCommit).string());
  auto other = EnsureModelDownloaded(kShardedRepo, "main", options_);
  EXPECT_EQ(other.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(absl::StrContains(other.status().message(), "cannot reach")) << other.status();
}

TEST_F(HubDownload, ShardedCheckpointFetchesTheIndexAndEveryShard) {
  auto snapshot = EnsureModelDownloaded(kShardedRepo, "main", options_);
  ASSERT_TRUE(snapshot.ok()) << snapshot.status();
  for (const char* f : {"config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors",
                        "model-00002-of-00002.safetensors", "tokenizer.model"})
    EXPECT_TRUE(fs::exists(fs::path(*snapshot) / f)) << f;
  EXPECT_EQ(CountRequests("GET", "/lfs/"), 3);
  // The same blobs serve another revision name without downloading again.
  server_->ClearRequests();
  ASSERT_TRUE(EnsureModelDownloaded(kShardedRepo, kShardedCommit, options_).ok());
  EXPECT_TRUE(server_->requests().empty());
}

TEST_F(HubDownload, RenamedRepoFollowsTheHubsRelativeRedirects) {
  server_->renamed["OpenGVLab/OldName"] = kRepo;
  auto snapshot = EnsureModelDownloaded("OpenGVLab/OldName", "main", options_);
  ASSERT_TRUE(snapshot.ok()) << snapshot.status();
  // Cached under the name asked for, as huggingface_hub does.
  EXPECT_EQ(*snapshot, (fs::path(cache_) / "models--OpenGVLab--OldName" / "snapshots" / kCommit).string());
  EXPECT_EQ(*ReadFile((fs::path(*snapshot) / "model.safetensors").string()), FileContent(files_, "model.safetensors"));
}

TEST_F(HubDownload, ConcurrentLoadsShareOneDownload) {
  server_->slow_body_ms = 5;
  std::vector<std::thread> threads;
  std::vector<absl::Status> results(3);
  for (int i = 0; i < 3; ++i) threads.emplace_back([&, i] { results[i] = Load().status(); });
  for (auto& t : threads) t.join();
  for (const auto& s : results) EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(CountRequests("GET", "/lfs/"), 1) << "the blob lock serializes downloads of one blob";
  EXPECT_EQ(*ReadFile((RepoDir() / "snapshots" / kCommit / "model.safetensors").string()),
            FileContent(files_, "model.safetensors"));
}

TEST(HubFiles, SelectsWhatAModelNeedsAndNothingElse) {
  auto files = SelectModelFiles({"README.md", "config.json", "model.safetensors", "pytorch_model.bin", "vocab.json",
                                 "merges.txt", "tokenizer.json", "examples/image1.jpg", "generation_config.json"});
  ASSERT_TRUE(files.ok());
  EXPECT_EQ(*files, (std::vector<std::string>{"config.json", "generation_config.json", "tokenizer.json", "vocab.json",
                                              "merges.txt", "model.safetensors"}));
  auto sharded = SelectModelFiles({"config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors"});
  ASSERT_TRUE(sharded.ok());
  EXPECT_EQ(sharded->back(), "model.safetensors.index.json");
  EXPECT_EQ(SelectModelFiles({"model.safetensors"}).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(SelectModelFiles({"config.json", "pytorch_model.bin"}).status().code(), absl::StatusCode::kNotFound);
}

TEST(HubFiles, FixturesAreServedWhenPresent) {
  INTERNVL_REQUIRE_FIXTURES(fixtures);
  const auto files = ModelFiles();
  ASSERT_EQ(files.size(), 5u);
  EXPECT_EQ(FileContent(files, "config.json"), *ReadFile(fixtures + "/tiny-qwen2/config.json"));
}

}  // namespace
}  // namespace internvl::hub
