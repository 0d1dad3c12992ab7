// Locating the shared reference data in tests. Fixtures come from
// $INTERNVL_FIXTURES (default ../shared/fixtures beside the repo), tokenizers
// from $INTERNVL_TOKENIZERS (default ../shared/tokenizers). Where they are
// absent parity tests skip with a clear message, except under CI (CI=true),
// where a missing fixture set is a failure: CI must run them.
#pragma once

#include <optional>
#include <string>

#include "gtest/gtest.h"

namespace internvl::testing {

std::optional<std::string> FixturesDir();
std::optional<std::string> TokenizersDir();
// A fixture image to read, given its PNG's path: the PNG itself, or in a build
// without image codecs (INTERNVL_WITH_MEDIA=OFF) its PPM sidecar, the same
// path with the extension replaced by .ppm (scripts/fixture_ppm.py makes them).
std::string FixtureImagePath(const std::string& png_path);
// The repository root (tests get INTERNVL_SOURCE_DIR from CTest).
std::string SourceDir();
// A fresh empty temporary directory, removed at exit.
std::string TempDir();
bool InCI();

// Runs `command` with /bin/sh; its exit code (-1 when killed by a signal),
// stdout and stderr kept apart. For tests that drive the real binaries.
struct ShellResult {
  int exit_code = -1;
  std::string out, err;
};
ShellResult RunShell(const std::string& command);

}  // namespace internvl::testing

// Skips the test (or fails it under CI) when the fixtures are missing;
// otherwise declares `const std::string fixtures` holding their path.
#define INTERNVL_REQUIRE_FIXTURES(var)                                                   \
  const auto var##_opt = ::internvl::testing::FixturesDir();                             \
  if (!var##_opt) {                                                                      \
    if (::internvl::testing::InCI()) FAIL() << "reference fixtures missing under CI";    \
    GTEST_SKIP() << "reference fixtures not found: set INTERNVL_FIXTURES (default "      \
                    "../shared/fixtures)";                                               \
  }                                                                                      \
  const std::string var = *var##_opt

#define INTERNVL_REQUIRE_TOKENIZERS(var)                                                 \
  const auto var##_opt = ::internvl::testing::TokenizersDir();                           \
  if (!var##_opt) {                                                                      \
    if (::internvl::testing::InCI()) FAIL() << "reference tokenizers missing under CI";  \
    GTEST_SKIP() << "reference tokenizers not found: set INTERNVL_TOKENIZERS (default "  \
                    "../shared/tokenizers)";                                             \
  }                                                                                      \
  const std::string var = *var##_opt
