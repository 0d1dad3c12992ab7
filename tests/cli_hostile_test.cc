// The `internvl` CLI as a user runs it on hostile input: every case ends with
// exit code 1 and one clear error line, never an abort (134), a crash or an
// allocation of gigabytes (each run is capped at 4 GiB of address space by
// `ulimit -v`, so an up-front allocation of what the input declares fails the
// test instead of passing by luck on a big machine).
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "core/testing/fixtures.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace internvl {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

class CliHostile : public ::testing::Test {
 protected:
  void SetUp() override {
    if (std::getenv("INTERNVL_CLI_BIN") == nullptr) GTEST_SKIP() << "INTERNVL_CLI_BIN not set (run under ctest)";
    dir_ = ::internvl::testing::TempDir();
  }
  ::internvl::testing::ShellResult Run(const std::string& args) {
    // AddressSanitizer reserves terabytes of shadow address space: no cap there.
#if defined(__SANITIZE_ADDRESS__)
    const char* cap = "";
#else
    const char* cap = "ulimit -v 4194304; ";
#endif
    return ::internvl::testing::RunShell(absl::StrCat(cap, std::getenv("INTERNVL_CLI_BIN"), " ", args));
  }
  void Write(const std::string& path, const std::string& text) {
    fs::create_directories(fs::path(path).parent_path());
    std::ofstream(path, std::ios::binary) << text;
  }
  std::string dir_;
};

TEST_F(CliHostile, PreprocessWithAHugeTileSizeIsAnError) {
  INTERNVL_REQUIRE_FIXTURES(fixtures);
  auto r = Run(absl::StrCat("preprocess --image ", fixtures, "/inputs/img_448x448.png --out ", dir_,
                            "/t.safetensors --image-size 100000"));
  EXPECT_EQ(r.exit_code, 2) << r.err;  // a usage error
  EXPECT_THAT(r.err, HasSubstr("tile size must be in"));
}

TEST_F(CliHostile, TokenizeWithAHugeIdInTheVocabularyIsAnError) {
  const std::string tok = dir_ + "/hostile_tokenizer";
  Write(tok + "/vocab.json", R"({"h": 0, "e": 1, "he": 2147483000})");
  Write(tok + "/merges.txt", "#version: 0.2\nh e\n");
  auto r = Run(absl::StrCat("tokenize --model ", tok, " --text hehe"));
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_THAT(r.err, HasSubstr("vocabulary id 2147483000"));
  Write(tok + "/vocab.json", R"({"h": 0, "e": 1, "he": 2})");
  Write(tok + "/added_tokens.json", R"({"<x>": 2147483600})");
  r = Run(absl::StrCat("tokenize --model ", tok, " --text hehe"));
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_THAT(r.err, HasSubstr("added_tokens.json"));
}

TEST_F(CliHostile, ChatRefusesATileCountPastTheLimitBeforeAnyWork) {
  INTERNVL_REQUIRE_FIXTURES(fixtures);
  auto r = Run(absl::StrCat("chat --model ", fixtures,
                            "/tiny-qwen2 --dtype fp32 --threads 1 --kv-cache-bytes 16777216 --image ", fixtures,
                            "/inputs/img_800x600.png --max-num 100000 --text hi --max-new-tokens 2"));
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_THAT(r.err, HasSubstr("max_num"));
}

TEST_F(CliHostile, CorruptImageAndVideoAreErrors) {
  INTERNVL_REQUIRE_FIXTURES(fixtures);
  Write(dir_ + "/bad.png", std::string("\x89PNG\r\n\x1a\nnot really", 18));
  Write(dir_ + "/bad.mp4", std::string(4096, 'v'));
  auto r = Run(absl::StrCat("chat --model ", fixtures,
                            "/tiny-qwen2 --dtype fp32 --threads 1 --kv-cache-bytes 16777216 --image ", dir_,
                            "/bad.png --text hi --max-new-tokens 2"));
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_THAT(r.err, HasSubstr("image"));
  r = Run(absl::StrCat("chat --model ", fixtures,
                       "/tiny-qwen2 --dtype fp32 --threads 1 --kv-cache-bytes 16777216 --video ", dir_,
                       "/bad.mp4 --text hi --max-new-tokens 2"));
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_THAT(r.err, HasSubstr("video"));
}

TEST_F(CliHostile, KvCacheDtypeIsHonouredAndCheckedBeforeAnyWork) {
  INTERNVL_REQUIRE_FIXTURES(fixtures);
  const std::string base = absl::StrCat("chat --model ", fixtures,
                                        "/tiny-qwen2 --dtype fp32 --threads 1 --kv-cache-bytes 16777216 --text hi "
                                        "--max-new-tokens 3 --kv-cache-dtype ");
  auto r = Run(base + "bf16");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_FALSE(r.out.empty());
  r = Run(base + "fp8");
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_THAT(r.err, HasSubstr("kv_cache_dtype"));
}

// A NaN temperature is refused (it had silently meant greedy); an extreme but
// valid one (1e-45 overflows fp32 logits) samples from the limit, greedy,
// instead of failing the draw.
TEST_F(CliHostile, TemperatureNaNIsRefusedAndAnExtremeOneSamples) {
  INTERNVL_REQUIRE_FIXTURES(fixtures);
  const std::string base = absl::StrCat("chat --model ", fixtures,
                                        "/tiny-qwen2 --dtype fp32 --threads 1 --kv-cache-bytes 16777216 --text hi "
                                        "--max-new-tokens 4 --temperature ");
  auto r = Run(base + "nan");
  EXPECT_EQ(r.exit_code, 2) << r.err;  // a usage error
  EXPECT_THAT(r.err, HasSubstr("--temperature"));
  r = Run(base + "1e-45");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  auto greedy = Run(base + "0");
  EXPECT_EQ(greedy.exit_code, 0) << greedy.err;
  EXPECT_EQ(r.out, greedy.out);
}

// The additive penalties: out of [-2, 2] (or NaN) a usage error naming the
// flag; in range they change the greedy answer of a model that repeats.
TEST_F(CliHostile, PenaltiesOutOfRangeAreUsageErrors) {
  INTERNVL_REQUIRE_FIXTURES(fixtures);
  const std::string base = absl::StrCat("chat --model ", fixtures,
                                        "/tiny-qwen2 --dtype fp32 --threads 1 --kv-cache-bytes 16777216 --text hi "
                                        "--max-new-tokens 48 ");
  for (const char* flag : {"--frequency-penalty", "--presence-penalty"}) {
    for (const char* bad : {"2.5", "-3", "nan"}) {
      auto r = Run(absl::StrCat(base, flag, " ", bad));
      EXPECT_EQ(r.exit_code, 2) << flag << " " << bad << ": " << r.err;
      EXPECT_THAT(r.err, HasSubstr(flag));
    }
  }
  auto plain = Run(base);
  auto penalized = Run(base + "--presence-penalty 2");
  EXPECT_EQ(plain.exit_code, 0) << plain.err;
  EXPECT_EQ(penalized.exit_code, 0) << penalized.err;
  EXPECT_NE(plain.out, penalized.out);
}

// A KV cache larger than the process may map: RESOURCE_EXHAUSTED naming the
// pool, with libtorch's message but none of its stack frames.
TEST_F(CliHostile, AKvCacheThatCannotBeAllocatedIsAClearError) {
  INTERNVL_REQUIRE_FIXTURES(fixtures);
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "needs the address-space cap, which AddressSanitizer cannot run under";
#endif
  auto r = Run(absl::StrCat("chat --model ", fixtures,
                            "/tiny-qwen2 --dtype fp32 --threads 1 --kv-cache-bytes 8589934592 --text hi"));
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_THAT(r.err, HasSubstr("could not allocate the KV pool"));
  EXPECT_THAT(r.err, ::testing::Not(HasSubstr("frame #")));
  EXPECT_THAT(r.err, ::testing::Not(HasSubstr("Exception raised from")));
}

}  // namespace
}  // namespace internvl
