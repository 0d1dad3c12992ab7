#include "core/model_path.h"

#include <cstdlib>
#include <filesystem>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "core/files.h"

namespace internvl {
namespace fs = std::filesystem;

std::string HfHubCacheDir() {
  if (const char* c = std::getenv("HF_HUB_CACHE"); c != nullptr && *c) return c;
  if (const char* h = std::getenv("HF_HOME"); h != nullptr && *h) return (fs::path(h) / "hub").string();
  const char* home = std::getenv("HOME");
  return (fs::path(home != nullptr ? home : "/root") / ".cache" / "huggingface" / "hub").string();
}

namespace {

bool IsHexSha(absl::string_view s) {
  if (s.size() != 40) return false;
  for (char c : s)
    if (!std::isxdigit(static_cast<unsigned char>(c))) return false;
  return true;
}

// "ORG/NAME": two non-empty parts of [A-Za-z0-9._-].
bool LooksLikeRepoId(absl::string_view id) {
  std::vector<absl::string_view> parts = absl::StrSplit(id, '/');
  if (parts.size() != 2) return false;
  for (absl::string_view p : parts) {
    if (p.empty() || p == "." || p == "..") return false;
    for (char c : p)
      if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.')) return false;
  }
  return true;
}

}  // namespace

absl::StatusOr<std::string> ResolveModelPath(absl::string_view model) {
  std::error_code ec;
  if (model.empty()) return absl::InvalidArgumentError("--model is empty");
  if (fs::is_directory(std::string(model), ec)) return std::string(model);
  std::string id(model), revision = "main";
  if (auto at = id.find('@'); at != std::string::npos) {
    revision = id.substr(at + 1);
    id = id.substr(0, at);
  }
  if (!LooksLikeRepoId(id))
    return absl::NotFoundError(absl::StrCat("model '", model, "' is neither a directory nor a Hugging Face id (ORG/NAME)"));
  const fs::path repo = fs::path(HfHubCacheDir()) / absl::StrCat("models--", absl::StrReplaceAll(id, {{"/", "--"}}));
  std::string sha = revision;
  if (!IsHexSha(revision)) {
    auto ref = ReadFile((repo / "refs" / revision).string(), 4096);
    if (!ref.ok())
      return absl::NotFoundError(absl::StrCat("model '", id, "' (revision ", revision, ") is not in the Hugging Face cache: ",
                                              (repo / "refs" / revision).string(), " is missing (downloading is not enabled)"));
    sha = std::string(absl::StripAsciiWhitespace(*ref));
  }
  const fs::path snapshot = repo / "snapshots" / sha;
  if (!fs::exists(snapshot / "config.json", ec))
    return absl::NotFoundError(absl::StrCat("model '", id, "': snapshot ", snapshot.string(), " has no config.json"));
  return snapshot.string();
}

}  // namespace internvl
