// Resolving `--model`: a local folder, or a Hugging Face id ("ORG/NAME",
// optionally "@REVISION") looked up in the HF cache layout that the Python
// huggingface_hub writes: $HF_HOME/hub/models--ORG--NAME/{refs/REV,
// snapshots/<sha>/}. $HF_HUB_CACHE overrides $HF_HOME/hub; HF_HOME defaults
// to ~/.cache/huggingface. (Downloading what is missing is separate work.)
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace internvl {

// The hub cache directory ($HF_HUB_CACHE, else $HF_HOME/hub, else
// ~/.cache/huggingface/hub).
std::string HfHubCacheDir();

// Returns a directory holding config.json for `model`: `model` itself when it
// is an existing directory; otherwise, when it looks like an HF id, the
// snapshot of its revision (default "main") in the cache. NOT_FOUND says
// where it looked.
absl::StatusOr<std::string> ResolveModelPath(absl::string_view model);

}  // namespace internvl
