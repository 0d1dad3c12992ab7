#include "services/trainer/paths.h"

#include <sys/stat.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace internvl::services::trainer {
namespace {

absl::StatusOr<std::string> RealPath(const std::string& path) {
  char buffer[PATH_MAX];
  if (::realpath(path.c_str(), buffer) == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("cannot resolve ", path, ": ", std::strerror(errno)));
  }
  return std::string(buffer);
}

}  // namespace

absl::StatusOr<std::string> CanonicalDir(const std::string& dir, absl::string_view flag) {
  if (dir.empty()) return absl::InvalidArgumentError(absl::StrCat("--", flag, " is empty"));
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat("--", flag, " ", dir, " is not a directory"));
  }
  return RealPath(dir);
}

bool IsWithin(absl::string_view path, absl::string_view root) {
  if (root == "/") return !path.empty() && path[0] == '/';
  if (path.size() < root.size() || path.substr(0, root.size()) != root) return false;
  return path.size() == root.size() || path[root.size()] == '/';
}

absl::StatusOr<std::string> ConfinePath(absl::string_view root, absl::string_view relative, absl::string_view field,
                                        absl::string_view root_name, Existence existence) {
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat(field, " '", relative, "' ", why));
  };
  if (relative.empty()) return absl::InvalidArgumentError(absl::StrCat(field, " is required"));
  if (relative.find('\0') != absl::string_view::npos) return bad("contains a NUL byte");
  if (relative[0] == '/') return bad(absl::StrCat("must be relative (to ", root_name, ")"));
  std::vector<std::string> parts;
  for (absl::string_view part : absl::StrSplit(relative, '/')) {
    if (part.empty() || part == ".") continue;
    if (part == "..") return bad("must not contain '..'");
    parts.emplace_back(part);
  }
  if (parts.empty()) return bad(absl::StrCat("names ", root_name, " itself"));

  std::string current(root);
  for (size_t i = 0; i < parts.size(); ++i) {
    const std::string next = current == "/" ? "/" + parts[i] : absl::StrCat(current, "/", parts[i]);
    struct stat st {};
    if (::lstat(next.c_str(), &st) != 0) {
      if (errno != ENOENT) return bad(absl::StrCat("cannot be checked: ", std::strerror(errno)));
      if (existence == Existence::kMustExist) return bad(absl::StrCat("does not exist under ", root_name));
      // The rest does not exist yet: appended as given.
      std::string out = next;
      for (size_t k = i + 1; k < parts.size(); ++k) absl::StrAppend(&out, "/", parts[k]);
      return out;
    }
    auto real = RealPath(next);
    if (!real.ok()) return bad(absl::StrCat("cannot be resolved (a dangling symlink?)"));
    if (!IsWithin(*real, root)) return bad(absl::StrCat("leaves ", root_name, " through a symlink"));
    if (i + 1 < parts.size()) {
      struct stat target {};
      if (::stat(real->c_str(), &target) != 0 || !S_ISDIR(target.st_mode))
        return bad(absl::StrCat("has a component that is not a directory: ", parts[i]));
    }
    current = *real;
  }
  if (current == root) return bad(absl::StrCat("resolves to ", root_name, " itself"));
  return current;
}

}  // namespace internvl::services::trainer
