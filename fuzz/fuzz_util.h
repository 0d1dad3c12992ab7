// Helpers shared by the libFuzzer targets in this folder (header-only, no
// gtest): input splitting, a per-process scratch folder removed at exit, and
// locating the shared reference data. Every target reads its own input, caps
// its own work and writes only inside ScratchDir().
#pragma once

#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace internvl::fuzz {

// Inputs above this are ignored (scripts/fuzz.sh runs with -max_len=65536;
// this guards corpus files and reproducer runs given by hand).
inline constexpr size_t kMaxInputBytes = size_t{1} << 20;

// Splits `data` at every occurrence of `sep` (the seed corpora use it to pack
// several files into one input). At most `max_parts` parts; the last one
// keeps the rest.
inline std::vector<absl::string_view> SplitParts(absl::string_view data, absl::string_view sep, size_t max_parts) {
  std::vector<absl::string_view> parts;
  while (parts.size() + 1 < max_parts) {
    const size_t at = data.find(sep);
    if (at == absl::string_view::npos) break;
    parts.push_back(data.substr(0, at));
    data.remove_prefix(at + sep.size());
  }
  parts.push_back(data);
  return parts;
}

// The separator between packed files in multi-file inputs.
inline constexpr absl::string_view kPartSeparator = "\n@@@@\n";

// A folder under $TMPDIR (or /tmp) private to this process, created on first
// use and removed with its contents at normal exit. libFuzzer's crash paths
// skip atexit: scripts/fuzz.sh points TMPDIR into build-fuzz/ and empties it.
inline const std::string& ScratchDir() {
  static const std::string* dir = [] {
    const char* tmp = std::getenv("TMPDIR");
    std::string pattern = std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/internvl-fuzz-XXXXXX";
    if (::mkdtemp(pattern.data()) == nullptr) std::abort();
    auto* d = new std::string(pattern);
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(*dir, ec);
    });
    return d;
  }();
  return *dir;
}

// Writes `bytes` to ScratchDir()/name (replacing it) and returns the path.
inline std::string WriteScratchFile(const std::string& name, absl::string_view bytes) {
  const std::string path = ScratchDir() + "/" + name;
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  f.close();
  if (!f) std::abort();  // the scratch folder must stay writable
  return path;
}

// Removes ScratchDir()/name if present.
inline void RemoveScratchFile(const std::string& name) {
  std::error_code ec;
  std::filesystem::remove(ScratchDir() + "/" + name, ec);
}

// Splits `input` at `sep` into the files `names[0..n)` of ScratchDir(): part
// i becomes names[i]; names past the last part are removed (absent files).
// Returns the parts.
inline std::vector<absl::string_view> WriteScratchFiles(absl::string_view input, absl::string_view sep,
                                                        const char* const* names, size_t n) {
  const auto parts = SplitParts(input, sep, n);
  for (size_t i = 0; i < n; ++i) {
    if (i < parts.size()) {
      WriteScratchFile(names[i], parts[i]);
    } else {
      RemoveScratchFile(names[i]);
    }
  }
  return parts;
}

// $env if set, else <repo>/../shared/<sibling> (as the tests find fixtures).
// INTERNVL_FUZZ_SOURCE_DIR is the repository root, set by fuzz/CMakeLists.txt.
inline std::string SharedDir(const char* env, const char* sibling) {
  if (const char* p = std::getenv(env); p != nullptr && *p != '\0') return p;
  return std::string(INTERNVL_FUZZ_SOURCE_DIR) + "/../shared/" + sibling;
}

// Little-endian readers over the input (short reads give zeros).
inline uint32_t ReadU32(absl::string_view s, size_t at) {
  uint32_t v = 0;
  for (size_t i = 0; i < 4 && at + i < s.size(); ++i) v |= uint32_t{static_cast<unsigned char>(s[at + i])} << (8 * i);
  return v;
}

}  // namespace internvl::fuzz
