#include "core/model_path.h"

#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <vector>

#include "absl/strings/ascii.h"
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

bool HfHubOffline() {
  const char* v = std::getenv("HF_HUB_OFFLINE");
  if (v == nullptr) return false;
  const std::string s = absl::AsciiStrToUpper(absl::StripAsciiWhitespace(v));
  return s == "1" || s == "ON" || s == "YES" || s == "TRUE";
}

bool IsCommitHash(absl::string_view s) {
  if (s.size() != 40) return false;
  for (char c : s)
    if (!std::isxdigit(static_cast<unsigned char>(c))) return false;
  return true;
}

absl::StatusOr<HfModelId> ParseHfModelId(absl::string_view model) {
  HfModelId out;
  std::string id(model);
  if (auto at = id.find('@'); at != std::string::npos) {
    out.revision = id.substr(at + 1);
    id = id.substr(0, at);
    if (out.revision.empty() || absl::StrContains(out.revision, "..") || absl::StartsWith(out.revision, "/"))
      return absl::InvalidArgumentError(absl::StrCat("model '", model, "': bad revision after '@'"));
  }
  std::vector<absl::string_view> parts = absl::StrSplit(id, '/');
  bool ok = parts.size() == 2;
  for (absl::string_view p : parts) {
    if (!ok) break;
    if (p.empty() || p == "." || p == "..") ok = false;
    for (char c : p)
      if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.')) ok = false;
  }
  if (!ok)
    return absl::InvalidArgumentError(
        absl::StrCat("model '", model, "' is neither a directory nor a Hugging Face id (ORG/NAME[@REVISION])"));
  out.repo_id = std::move(id);
  return out;
}

std::string HfRepoCacheDir(absl::string_view repo_id, absl::string_view cache_dir) {
  const fs::path root = cache_dir.empty() ? fs::path(HfHubCacheDir()) : fs::path(std::string(cache_dir));
  return (root / absl::StrCat("models--", absl::StrReplaceAll(repo_id, {{"/", "--"}}))).string();
}

absl::StatusOr<std::string> CachedCommit(const HfModelId& id, absl::string_view cache_dir) {
  if (IsCommitHash(id.revision)) return id.revision;
  const fs::path ref = fs::path(HfRepoCacheDir(id.repo_id, cache_dir)) / "refs" / id.revision;
  auto content = ReadFile(ref.string(), 4096);
  if (!content.ok())
    return absl::NotFoundError(absl::StrCat("model '", id.repo_id, "' (revision ", id.revision,
                                            ") is not in the Hugging Face cache: ", ref.string(), " is missing"));
  std::string sha(absl::StripAsciiWhitespace(*content));
  if (!IsCommitHash(sha)) return absl::DataLossError(absl::StrCat(ref.string(), " does not hold a commit hash"));
  return sha;
}

absl::StatusOr<std::string> ResolveModelPath(absl::string_view model) {
  std::error_code ec;
  if (model.empty()) return absl::InvalidArgumentError("--model is empty");
  if (fs::is_directory(std::string(model), ec)) return std::string(model);
  auto id = ParseHfModelId(model);
  if (!id.ok()) return absl::NotFoundError(id.status().message());
  auto sha = CachedCommit(*id);
  if (!sha.ok())
    return absl::NotFoundError(
        absl::StrCat(sha.status().message(), " (download it with `internvl download --model ", model, "`)"));
  const fs::path snapshot = fs::path(HfRepoCacheDir(id->repo_id)) / "snapshots" / *sha;
  if (!fs::exists(snapshot / "config.json", ec))
    return absl::NotFoundError(
        absl::StrCat("model '", id->repo_id, "': snapshot ", snapshot.string(), " has no config.json"));
  return snapshot.string();
}

}  // namespace internvl
