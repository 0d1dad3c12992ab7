// Loading models by name: downloads what a model needs from the Hugging Face
// hub into the cache layout that the Python huggingface_hub writes, so both
// share one cache:
//
//   <cache>/models--ORG--NAME/
//     refs/<revision>                 the commit hash (from X-Repo-Commit / the API's "sha")
//     blobs/<etag>                    content; etag = sha256 (LFS) or git blob sha1 (small files)
//     blobs/<etag>.incomplete         a partial download, resumed with HTTP Range
//     snapshots/<commit>/<file>       RELATIVE symlink -> ../../blobs/<etag>
//   <cache>/.locks/models--ORG--NAME/<etag>.lock   flock, as huggingface_hub's filelock
//
// The protocol is huggingface_hub's (file_download.py): GET
// {endpoint}/api/models/{repo}/revision/{rev} for the commit and file list;
// HEAD {endpoint}/{repo}/resolve/{commit}/{file} (Accept-Encoding: identity,
// redirects not followed) for ETag / X-Linked-Etag / X-Linked-Size /
// Location; GET of the Location (the CDN for LFS files) with Range to resume.
//
// Requests per load:
//   HF_HUB_OFFLINE=1:                  none (cache only).
//   revision is a 40-hex commit and the snapshot is complete: none.
//   otherwise, everything cached:      one (the API revision lookup: a branch may move).
//   otherwise:                         the API lookup + HEAD and GET per missing file.
// When the hub cannot be reached (transport error) but the cache holds a
// complete snapshot for refs/<revision>, that snapshot is used (a warning on
// stderr), as huggingface_hub falls back to the cache.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace internvl::hub {

// The public hub; $HF_ENDPOINT overrides it.
inline constexpr char kDefaultEndpoint[] = "https://huggingface.co";

struct HubOptions {
  std::string endpoint = kDefaultEndpoint;  // no trailing '/'
  std::string token;                        // sent as "Authorization: Bearer <token>" when set
  std::string cache_dir;                    // empty: HfHubCacheDir()
  bool offline = false;                     // never touch the network
  bool progress = false;                    // a progress bar on stderr
  long connect_timeout_s = 10;
  long stall_timeout_s = 60;  // abandon a transfer that receives nothing for this long

  // $HF_ENDPOINT, $HF_TOKEN (else the file $HF_TOKEN_PATH, default
  // $HF_HOME/token, that `huggingface-cli login` writes), HfHubCacheDir(),
  // HF_HUB_OFFLINE, and a progress bar when stderr is a terminal (unless
  // HF_HUB_DISABLE_PROGRESS_BARS is set).
  static HubOptions FromEnv();
};

// The files of a repo that loading a model needs, from the repo's file list:
// config.json (required), generation_config.json, the weights
// (model.safetensors.index.json, whose shards are added once it is read, or
// model.safetensors), and the tokenizer files present. Nothing else (README,
// *.bin, *.pth, images, remote code) is fetched. NOT_FOUND when config.json or
// safetensors weights are missing.
absl::StatusOr<std::vector<std::string>> SelectModelFiles(const std::vector<std::string>& repo_files);

// The tokenizer files fetched when present.
const std::vector<std::string>& TokenizerFiles();

// Ensures the cache holds everything `repo_id`@`revision` needs and returns
// the snapshot directory. Errors, each with a message a user can act on:
//   NOT_FOUND            unknown repo, revision or file (404)
//   PERMISSION_DENIED    gated/private repo (401/403): set HF_TOKEN
//   FAILED_PRECONDITION  offline (HF_HUB_OFFLINE) and a file is not cached
//   RESOURCE_EXHAUSTED   disk full (ENOSPC/EDQUOT), or not enough free space up front
//   UNAVAILABLE          hub unreachable or transfer interrupted (the .incomplete stays; rerun resumes)
//   DATA_LOSS            content does not match its etag (the bad download is deleted)
absl::StatusOr<std::string> EnsureModelDownloaded(absl::string_view repo_id, absl::string_view revision,
                                                  const HubOptions& options);

// `model` as given to --model: an existing directory is returned as is;
// otherwise "ORG/NAME[@REVISION]" is EnsureModelDownloaded with
// HubOptions::FromEnv().
absl::StatusOr<std::string> ResolveOrDownloadModel(absl::string_view model);
absl::StatusOr<std::string> ResolveOrDownloadModel(absl::string_view model, const HubOptions& options);

}  // namespace internvl::hub
