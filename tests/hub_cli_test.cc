// `internvl download` as a user (or a Kubernetes init container) runs it:
// the real binary, environment variables only, against the loopback hub.
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "core/files.h"
#include "core/hub/fake_hub_server.h"
#include "core/testing/fixtures.h"
#include "gtest/gtest.h"

namespace internvl::hub {
namespace {
namespace fs = std::filesystem;
using testing::FakeHubServer;

constexpr char kCommit[] = "0123456789abcdef0123456789abcdef01234567";

using Result = ::internvl::testing::ShellResult;
Result Shell(const std::string& command) { return ::internvl::testing::RunShell(command); }

// `env <env> internvl download <args>` without proxies or a token from outside.
std::string DownloadCommandLine(const std::string& env, const std::string& args) {
  return absl::StrCat("env -u http_proxy -u HTTP_PROXY -u HF_TOKEN ", env, " ", std::getenv("INTERNVL_CLI_BIN"),
                      " download ", args);
}

Result Download(const std::string& env, const std::string& args) { return Shell(DownloadCommandLine(env, args)); }

class DownloadCommand : public ::testing::Test {
 protected:
  void SetUp() override {
    if (std::getenv("INTERNVL_CLI_BIN") == nullptr) GTEST_SKIP() << "INTERNVL_CLI_BIN not set (run under ctest)";
    auto server = FakeHubServer::Start({{"OpenGVLab/InternVL2-1B",
                                         kCommit,
                                         {{"config.json", R"({"model_type": "qwen2"})", false},
                                          {"model.safetensors", std::string(200000, 'w'), true},
                                          {"tokenizer_config.json", "{}", false}}}});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    home_ = internvl::testing::TempDir();
    env_ = absl::StrCat("HF_HOME=", home_, " HF_ENDPOINT=", server_->endpoint());
  }
  std::unique_ptr<FakeHubServer> server_;
  std::string home_, env_;
};

TEST_F(DownloadCommand, PrintsTheSnapshotPathThenWorksOffline) {
  const std::string snapshot = absl::StrCat(home_, "/hub/models--OpenGVLab--InternVL2-1B/snapshots/", kCommit);
  Result first = Download(env_, "--model OpenGVLab/InternVL2-1B");
  ASSERT_EQ(first.exit_code, 0) << first.err;
  EXPECT_EQ(absl::StripTrailingAsciiWhitespace(first.out), snapshot);
  EXPECT_TRUE(fs::is_symlink(snapshot + "/model.safetensors"));
  EXPECT_TRUE(first.err.empty()) << "no progress bar when stderr is not a terminal: " << first.err;
  server_->ClearRequests();
  Result offline = Download(env_ + " HF_HUB_OFFLINE=1", "--model OpenGVLab/InternVL2-1B@main");
  ASSERT_EQ(offline.exit_code, 0) << offline.err;
  EXPECT_EQ(absl::StripTrailingAsciiWhitespace(offline.out), snapshot);
  EXPECT_TRUE(server_->requests().empty());
}

TEST_F(DownloadCommand, ShowsAProgressBarOnATerminal) {
  if (std::system("command -v script >/dev/null 2>&1") != 0) GTEST_SKIP() << "no `script` to make a terminal";
  // util-linux `script` runs the command on a pseudo-terminal: isatty(stderr).
  // `script` copies what the terminal showed (stdout and stderr) to its stdout.
  Result r =
      Shell(absl::StrCat("script -qec '", DownloadCommandLine(env_, "--model OpenGVLab/InternVL2-1B"), "' /dev/null"));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(absl::StrContains(r.out, "model.safetensors")) << r.out;
  EXPECT_TRUE(absl::StrContains(r.out, "MiB")) << r.out;
  EXPECT_TRUE(absl::StrContains(r.out, "[##############################]")) << r.out;
}

TEST_F(DownloadCommand, ErrorsSayWhatToDo) {
  Result missing = Download(env_, "--model OpenGVLab/NoSuchModel");
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(missing.err, "not found")) << missing.err;
  EXPECT_TRUE(absl::StrContains(missing.err, "NOT_FOUND")) << missing.err;
  server_->gated = true;
  Result gated = Download(env_, "--model OpenGVLab/InternVL2-1B");
  EXPECT_EQ(gated.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(gated.err, "HF_TOKEN")) << gated.err;
  Result with_token = Download(env_ + " HF_TOKEN=" + server_->token, "--model OpenGVLab/InternVL2-1B");
  EXPECT_EQ(with_token.exit_code, 0) << with_token.err;
  Result offline = Download(env_ + " HF_HUB_OFFLINE=1", "--model OpenGVLab/Other");
  EXPECT_EQ(offline.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(offline.err, "HF_HUB_OFFLINE")) << offline.err;
  EXPECT_EQ(Download(env_, "").exit_code, 1);  // --model is required
}

}  // namespace
}  // namespace internvl::hub
