// Resolving `--model`: a local folder, or a Hugging Face id ("ORG/NAME",
// optionally "@REVISION") looked up in the HF cache layout that the Python
// huggingface_hub writes: $HF_HOME/hub/models--ORG--NAME/{refs/REV,
// snapshots/<sha>/, blobs/<etag>}. $HF_HUB_CACHE overrides $HF_HOME/hub;
// HF_HOME defaults to ~/.cache/huggingface.
//
// Everything here reads the local disk only (internvl_base never links an HTTP
// client). Downloading what is missing is core/hub's
// `hub::ResolveOrDownloadModel`, which callers that load models by name use.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace internvl {

// The hub cache directory ($HF_HUB_CACHE, else $HF_HOME/hub, else
// ~/.cache/huggingface/hub).
std::string HfHubCacheDir();

// True when HF_HUB_OFFLINE is set to 1/ON/YES/TRUE (as huggingface_hub's
// constants._is_true): never touch the network, use the cache only.
bool HfHubOffline();

// A parsed "ORG/NAME[@REVISION]".
struct HfModelId {
  std::string repo_id;            // "ORG/NAME"
  std::string revision = "main";  // branch, tag or 40-hex commit
};

// Parses "ORG/NAME[@REVISION]"; both parts of the id are [A-Za-z0-9._-]+
// (not "." or ".."). INVALID_ARGUMENT otherwise.
absl::StatusOr<HfModelId> ParseHfModelId(absl::string_view model);

// True for a full 40-hex-digit git commit hash (an immutable revision).
bool IsCommitHash(absl::string_view revision);

// <cache>/models--ORG--NAME for "ORG/NAME" (huggingface_hub's
// repo_folder_name for repo_type "model").
std::string HfRepoCacheDir(absl::string_view repo_id, absl::string_view cache_dir = "");

// The commit a revision points to in the cache: the revision itself when it
// is a commit hash, else the content of refs/<revision>. NOT_FOUND naming the
// refs file otherwise.
absl::StatusOr<std::string> CachedCommit(const HfModelId& id, absl::string_view cache_dir = "");

// Returns a directory holding config.json for `model`: `model` itself when it
// is an existing directory; otherwise, when it looks like an HF id, the
// snapshot of its revision (default "main") in the cache. NOT_FOUND says
// where it looked. Never downloads: see hub::ResolveOrDownloadModel.
absl::StatusOr<std::string> ResolveModelPath(absl::string_view model);

}  // namespace internvl
