#include "core/testing/fixtures.h"

#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <vector>

namespace internvl::testing {
namespace fs = std::filesystem;
namespace {

std::optional<std::string> Locate(const char* env, const char* sibling) {
  if (const char* p = std::getenv(env); p != nullptr && *p != '\0') {
    if (fs::is_directory(p)) return fs::canonical(p).string();
    return std::nullopt;
  }
  fs::path candidate = fs::path(SourceDir()) / ".." / "shared" / sibling;
  std::error_code ec;
  if (fs::is_directory(candidate, ec)) return fs::canonical(candidate).string();
  return std::nullopt;
}

}  // namespace

std::string SourceDir() {
  if (const char* p = std::getenv("INTERNVL_SOURCE_DIR"); p != nullptr && *p != '\0') return p;
  return fs::current_path().string();
}

std::optional<std::string> FixturesDir() { return Locate("INTERNVL_FIXTURES", "fixtures"); }
std::optional<std::string> TokenizersDir() { return Locate("INTERNVL_TOKENIZERS", "tokenizers"); }

bool InCI() {
  const char* ci = std::getenv("CI");
  return ci != nullptr && std::string(ci) == "true";
}

std::string TempDir() {
  static std::atomic<int> counter{0};
  fs::path base = fs::temp_directory_path() /
                  ("internvl_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
  fs::remove_all(base);
  fs::create_directories(base);
  // Removed at exit so repeated runs do not fill /tmp.
  static std::vector<fs::path>* dirs = [] {
    auto* v = new std::vector<fs::path>();
    std::atexit([] {
      std::error_code ec;
      for (const auto& d : *dirs) fs::remove_all(d, ec);
    });
    return v;
  }();
  dirs->push_back(base);
  return base.string();
}

}  // namespace internvl::testing
