// Confining client-supplied paths to the directories the trainer service is
// configured with (--output-root, --model-root, --data-root). A path from a
// JobSpec is RELATIVE to its root; it is refused (INVALID_ARGUMENT) when it
// is absolute, has a `..` component, or when an existing component is a
// symlink (or a chain of them) leading outside the root. Components that do
// not exist yet are appended as they are (the trainer creates them).
//
// The check runs at submission; a symlink planted under a root between the
// check and the job's start is not caught (the roots are meant to be written
// by this service and trusted operators only).
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace internvl::services::trainer {

// The canonical absolute form of an existing directory (realpath), or
// INVALID_ARGUMENT naming `flag` when it is not one.
absl::StatusOr<std::string> CanonicalDir(const std::string& dir, absl::string_view flag);

// Whether `path` is `root` or below it (both canonical, absolute).
bool IsWithin(absl::string_view path, absl::string_view root);

enum class Existence { kMayBeMissing, kMustExist };

// `relative` resolved under the canonical directory `root`: every existing
// component is resolved through symlinks and must stay within `root`.
// `field` and `root_name` name the spec field and the root in errors
// (e.g. "output_dir", "--output-root"). The empty path and a path naming the root itself are refused.
absl::StatusOr<std::string> ConfinePath(absl::string_view root, absl::string_view relative, absl::string_view field,
                                        absl::string_view root_name, Existence existence);

}  // namespace internvl::services::trainer
