#include "core/testing/fixtures.h"

#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <vector>

#include "core/files.h"

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

std::string FixtureImagePath(const std::string& png_path) {
#ifdef INTERNVL_NO_MEDIA
  return fs::path(png_path).replace_extension(".ppm").string();
#else
  return png_path;
#endif
}

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

ShellResult RunShell(const std::string& command) {
  ShellResult r;
  const std::string err_file = TempDir() + "/shell-stderr-" + std::to_string(::getpid()) + ".txt";
  FILE* p = ::popen((command + " 2>" + err_file).c_str(), "r");
  if (p == nullptr) return r;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) r.out.append(buf, n);
  const int status = ::pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.err = ReadFile(err_file).value_or("");
  return r;
}

}  // namespace internvl::testing
