#include "core/hub/hub_download.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "core/files.h"
#include "core/hub/digest.h"
#include "core/hub/http.h"
#include "core/model_path.h"
#include "core/status.h"
#include "nlohmann/json.hpp"

namespace internvl::hub {
namespace {
namespace fs = std::filesystem;

constexpr char kConfig[] = "config.json";
constexpr char kGenerationConfig[] = "generation_config.json";
constexpr char kWeights[] = "model.safetensors";
constexpr char kWeightsIndex[] = "model.safetensors.index.json";
constexpr char kUserAgent[] = "User-Agent: internvl-hub/1.0 (libcurl)";
constexpr int64_t kCopyChunk = int64_t{1} << 20;
constexpr double kMiB = 1024.0 * 1024.0;
constexpr int kMaxRelativeRedirects = 5;

bool EnvTrue(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr) return false;
  const std::string s = absl::AsciiStrToUpper(absl::StripAsciiWhitespace(v));
  return s == "1" || s == "ON" || s == "YES" || s == "TRUE";
}

// huggingface_hub's _normalize_etag: drop a weak "W/" prefix and the quotes.
std::string NormalizeEtag(absl::string_view etag) {
  absl::ConsumePrefix(&etag, "W/");
  return std::string(absl::StripSuffix(absl::StripPrefix(etag, "\""), "\""));
}

bool IsHex(absl::string_view s, size_t n) {
  if (s.size() != n) return false;
  for (char c : s)
    if (!absl::ascii_isxdigit(static_cast<unsigned char>(c))) return false;
  return true;
}

std::string EscapePath(absl::string_view path) {
  std::vector<std::string> parts;
  for (absl::string_view p : absl::StrSplit(path, '/')) parts.push_back(EscapePathSegment(std::string(p)));
  return absl::StrJoin(parts, "/");
}

// "scheme://host[:port]" of a URL, for relative Location headers.
std::string Origin(const std::string& url) {
  const auto scheme = url.find("://");
  if (scheme == std::string::npos) return url;
  const auto slash = url.find('/', scheme + 3);
  return slash == std::string::npos ? url : url.substr(0, slash);
}

std::string Errno(int err) { return std::strerror(err); }

absl::Status ErrnoStatus(int err, absl::string_view what) {
  if (err == ENOSPC || err == EDQUOT)
    return absl::ResourceExhaustedError(
        absl::StrCat(what, ": disk full (", Errno(err), "); free space or point HF_HOME/HF_HUB_CACHE elsewhere"));
  return absl::InternalError(absl::StrCat(what, ": ", Errno(err)));
}

struct Context {
  HfModelId id;
  const HubOptions* options;
  std::string cache_dir;
  fs::path repo_dir;  // <cache>/models--ORG--NAME
  fs::path locks_dir;

  std::vector<std::string> Headers() const {
    std::vector<std::string> h = {kUserAgent};
    if (!options->token.empty()) h.push_back(absl::StrCat("Authorization: Bearer ", options->token));
    return h;
  }
  HttpRequest Request(const std::string& method, const std::string& url) const {
    HttpRequest r;
    r.method = method;
    r.url = url;
    r.headers = Headers();
    r.connect_timeout_s = options->connect_timeout_s;
    r.stall_timeout_s = options->stall_timeout_s;
    return r;
  }
};

// Maps a hub error response (X-Error-Code as huggingface_hub's
// hf_raise_for_status reads it) to a status a user can act on.
absl::Status HttpError(const Context& ctx, const HttpResponse& r, absl::string_view file) {
  const std::string code = r.Header("x-error-code");
  const std::string repo = ctx.id.repo_id;
  const std::string where = absl::StrCat(repo, "@", ctx.id.revision, " at ", ctx.options->endpoint);
  if (r.status == 401 || r.status == 403) {
    if (code == "GatedRepo")
      return absl::PermissionDeniedError(
          absl::StrCat("model ", repo, " is gated (HTTP ", r.status, "): accept its terms at ", ctx.options->endpoint,
                       "/", repo, " and set HF_TOKEN to a token of that account",
                       ctx.options->token.empty() ? " (HF_TOKEN is not set)" : " (the HF_TOKEN given has no access)"));
    return absl::PermissionDeniedError(absl::StrCat(
        "access to model ", where, " denied (HTTP ", r.status, "): the repo is private or gated, or does not exist; ",
        ctx.options->token.empty() ? "set HF_TOKEN to a token that can read it (or run `huggingface-cli login`)"
                                   : "the HF_TOKEN given was refused or cannot read it"));
  }
  if (r.status == 404) {
    if (code == "RevisionNotFound")
      return absl::NotFoundError(
          absl::StrCat("model ", repo, " has no revision '", ctx.id.revision, "' at ", ctx.options->endpoint));
    if (code == "EntryNotFound" || !file.empty())
      return absl::NotFoundError(absl::StrCat("file ", file, " not found in ", where));
    return absl::NotFoundError(absl::StrCat("model ", repo, " not found at ", ctx.options->endpoint,
                                            " (check the ORG/NAME spelling, or HF_ENDPOINT)"));
  }
  if (r.status == 429 || r.status >= 500)
    return absl::UnavailableError(absl::StrCat("the hub at ", ctx.options->endpoint, " answered HTTP ", r.status,
                                               file.empty() ? "" : absl::StrCat(" for ", file), "; retry later"));
  return absl::InternalError(absl::StrCat("unexpected HTTP ", r.status, " from ", ctx.options->endpoint, " for ", where,
                                          file.empty() ? "" : absl::StrCat(" file ", file)));
}

// Shards listed by an index's weight_map, sorted and unique.
absl::StatusOr<std::vector<std::string>> IndexShards(const fs::path& index) {
  INTERNVL_ASSIGN_OR_RETURN(std::string text, ReadFile(index.string()));
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.contains("weight_map") || !j["weight_map"].is_object())
    return absl::DataLossError(absl::StrCat(index.string(), " is not a safetensors index (no weight_map object)"));
  std::set<std::string> shards;
  for (const auto& [name, shard] : j["weight_map"].items()) {
    if (!shard.is_string()) return absl::DataLossError(absl::StrCat(index.string(), ": weight_map value of ", name));
    const std::string s = shard.get<std::string>();
    if (s.empty() || s.front() == '/' || absl::StrContains(s, ".."))
      return absl::DataLossError(absl::StrCat(index.string(), ": bad shard name '", s, "'"));
    shards.insert(s);
  }
  return std::vector<std::string>(shards.begin(), shards.end());
}

// The first file a model needs that `snapshot` lacks ("" when complete).
absl::StatusOr<std::string> FirstMissing(const fs::path& snapshot) {
  std::error_code ec;
  if (!fs::exists(snapshot / kConfig, ec)) return std::string(kConfig);
  if (fs::exists(snapshot / kWeightsIndex, ec)) {
    INTERNVL_ASSIGN_OR_RETURN(auto shards, IndexShards(snapshot / kWeightsIndex));
    for (const auto& s : shards)
      if (!fs::exists(snapshot / s, ec)) return s;
    return std::string();
  }
  if (!fs::exists(snapshot / kWeights, ec)) return std::string(kWeights);
  return std::string();
}

// An exclusive flock on <cache>/.locks/models--ORG--NAME/<etag>.lock, the
// lock huggingface_hub's FileLock takes for the same blob.
class BlobLock {
 public:
  static absl::StatusOr<BlobLock> Acquire(const fs::path& path) {
    std::error_code ec;
    fs::create_directories(path.parent_path(), ec);
    const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return ErrnoStatus(errno, absl::StrCat("opening lock ", path.string()));
    while (::flock(fd, LOCK_EX) != 0) {
      if (errno != EINTR) {
        const int err = errno;
        ::close(fd);
        return ErrnoStatus(err, absl::StrCat("locking ", path.string()));
      }
    }
    return BlobLock(fd);
  }
  BlobLock(BlobLock&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  BlobLock& operator=(BlobLock&&) = delete;
  ~BlobLock() {
    if (fd_ >= 0) ::close(fd_);
  }

 private:
  explicit BlobLock(int fd) : fd_(fd) {}
  int fd_;
};

class ProgressBar {
 public:
  ProgressBar(bool enabled, std::string name, int64_t base, int64_t total)
      : enabled_(enabled),
        name_(std::move(name)),
        base_(base),
        total_(total),
        start_(std::chrono::steady_clock::now()) {}
  void Update(int64_t received, bool force = false) {
    if (!enabled_) return;
    const auto now = std::chrono::steady_clock::now();
    if (!force && now - last_ < std::chrono::milliseconds(100)) return;
    last_ = now;
    const double secs = std::chrono::duration<double>(now - start_).count();
    const double rate = secs > 0 ? received / kMiB / secs : 0;
    const int64_t have = base_ + received;
    std::string line;
    if (total_ > 0) {
      constexpr int kWidth = 30;
      const int filled = static_cast<int>(kWidth * std::min<double>(1.0, static_cast<double>(have) / total_));
      line = absl::StrFormat("\r%-32.32s [%s%s] %8.1f/%.1f MiB %6.1f MiB/s", name_, std::string(filled, '#'),
                             std::string(kWidth - filled, '.'), have / kMiB, total_ / kMiB, rate);
    } else {
      line = absl::StrFormat("\r%-32.32s %8.1f MiB %6.1f MiB/s", name_, have / kMiB, rate);
    }
    std::fputs(line.c_str(), stderr);
    shown_ = true;
  }
  ~ProgressBar() {
    if (shown_) std::fputs("\n", stderr);
  }

 private:
  bool enabled_;
  std::string name_;
  int64_t base_, total_;
  std::chrono::steady_clock::time_point start_, last_{};
  bool shown_ = false;
};

absl::Status WriteAll(int fd, const char* data, size_t size, const fs::path& path) {
  while (size > 0) {
    const ssize_t n = ::write(fd, data, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, absl::StrCat("writing ", path.string()));
    }
    data += n;
    size -= static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

// Downloads `url` into `blob` through blob.incomplete, resuming what an
// earlier run left there (as huggingface_hub's _download_to_tmp_and_move and
// http_get with its Range header), and checks the content against the etag:
// sha256 for LFS files, the git blob sha1 for small files.
absl::Status DownloadBlob(const Context& ctx, const std::string& url, const fs::path& blob, const std::string& etag,
                          int64_t expected_size, const std::string& filename) {
  const fs::path incomplete = blob.string() + ".incomplete";
  const int fd = ::open(incomplete.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoStatus(errno, absl::StrCat("creating ", incomplete.string()));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  off_t end = ::lseek(fd, 0, SEEK_END);
  int64_t have = end > 0 ? end : 0;
  if (expected_size >= 0 && have > expected_size) {
    if (::ftruncate(fd, 0) != 0) return ErrnoStatus(errno, absl::StrCat("truncating ", incomplete.string()));
    ::lseek(fd, 0, SEEK_SET);
    have = 0;
  }

  // What the etag promises: a sha256 (64 hex) or a git sha1 (40 hex, needs the size).
  const bool check_sha256 = IsHex(etag, 64);
  const bool check_git_sha1 = IsHex(etag, 40) && expected_size >= 0;
  StreamingDigest digest(check_sha256 ? StreamingDigest::Algorithm::kSha256 : StreamingDigest::Algorithm::kSha1);
  auto start_digest = [&] {
    digest.Reset();
    if (check_git_sha1) {
      const std::string header = absl::StrCat("blob ", expected_size);
      digest.Update(header.data(), header.size() + 1);
    }
  };
  start_digest();
  if (have > 0) {  // hash what an earlier run downloaded
    const int rfd = ::open(incomplete.c_str(), O_RDONLY | O_CLOEXEC);
    if (rfd < 0) return ErrnoStatus(errno, absl::StrCat("reading ", incomplete.string()));
    std::string buf(kCopyChunk, '\0');
    int64_t left = have;
    while (left > 0) {
      const ssize_t n = ::read(rfd, buf.data(), std::min<int64_t>(left, kCopyChunk));
      if (n <= 0) {
        ::close(rfd);
        return absl::InternalError(absl::StrCat("reading ", incomplete.string(), ": short read"));
      }
      digest.Update(buf.data(), static_cast<size_t>(n));
      left -= n;
    }
    ::close(rfd);
  }

  if (expected_size >= 0 && have < expected_size) {  // fail early rather than after gigabytes
    struct statvfs vfs;
    if (::statvfs(blob.parent_path().c_str(), &vfs) == 0) {
      const double free_bytes = static_cast<double>(vfs.f_bavail) * vfs.f_frsize;
      if (free_bytes < static_cast<double>(expected_size - have))
        return absl::ResourceExhaustedError(absl::StrFormat(
            "not enough disk space for %s: %.1f MiB needed in %s, %.1f MiB free; free space or point HF_HOME/"
            "HF_HUB_CACHE elsewhere",
            filename, (expected_size - have) / kMiB, blob.parent_path().string(), free_bytes / kMiB));
    }
  }

  int64_t received = 0;
  if (expected_size < 0 || have < expected_size) {
    ProgressBar bar(ctx.options->progress, filename, have, expected_size);
    HttpRequest req = ctx.Request("GET", url);
    req.follow_redirects = true;
    if (have > 0) req.range_from = have;
    bool first = true;
    req.on_body = [&](long status, const std::map<std::string, std::string>& headers, const char* data,
                      size_t size) -> absl::Status {
      if (first) {
        first = false;
        if (have > 0 && status != 206) {  // the server ignored Range: start over
          if (::ftruncate(fd, 0) != 0) return ErrnoStatus(errno, absl::StrCat("truncating ", incomplete.string()));
          ::lseek(fd, 0, SEEK_SET);
          have = 0;
          start_digest();
        } else if (status == 206) {
          auto it = headers.find("content-range");  // "bytes START-END/TOTAL"
          int64_t from = -1;
          if (it != headers.end()) {
            absl::string_view v = it->second;
            absl::ConsumePrefix(&v, "bytes ");
            (void)absl::SimpleAtoi(v.substr(0, v.find('-')), &from);
          }
          if (from != have)
            return absl::UnavailableError(absl::StrCat("resuming ", filename, ": asked for bytes from ", have,
                                                       ", the server sent ",
                                                       it == headers.end() ? "no Content-Range" : it->second));
        }
      }
      INTERNVL_RETURN_IF_ERROR(WriteAll(fd, data, size, incomplete));
      digest.Update(data, size);
      received += static_cast<int64_t>(size);
      return absl::OkStatus();
    };
    req.on_progress = [&](int64_t) { bar.Update(received); };
    auto resp = PerformHttp(req);
    bar.Update(received, /*force=*/true);
    if (!resp.ok()) {
      if (resp.status().code() != absl::StatusCode::kUnavailable) return resp.status();
      return absl::UnavailableError(
          absl::StrCat("downloading ", filename, " of ", ctx.id.repo_id, " was interrupted after ", have + received,
                       " bytes (kept in ", incomplete.string(), "; run again to resume): ", resp.status().message()));
    }
    if (resp->status < 200 || resp->status >= 300) {
      if (resp->status == 416) {  // our partial file is not a prefix the server knows: start over next time
        if (::ftruncate(fd, 0) != 0) return ErrnoStatus(errno, absl::StrCat("truncating ", incomplete.string()));
        return absl::UnavailableError(absl::StrCat("resuming ", filename, " was refused (HTTP 416); the partial ",
                                                   "download was discarded, run again"));
      }
      return HttpError(ctx, *resp, filename);
    }
  }
  const int64_t total = have + received;
  if (expected_size >= 0 && total != expected_size)
    return absl::UnavailableError(absl::StrCat("downloading ", filename, " of ", ctx.id.repo_id, " stopped at ", total,
                                               " of ", expected_size, " bytes (kept in ", incomplete.string(),
                                               "; run again to resume)"));
  if (::fsync(fd) != 0 && errno != EINVAL && errno != EROFS)
    return ErrnoStatus(errno, absl::StrCat("syncing ", incomplete.string()));
  if (check_sha256 || check_git_sha1) {
    const std::string got = digest.HexDigest();
    if (got != absl::AsciiStrToLower(etag)) {
      std::error_code ec;
      fs::remove(incomplete, ec);
      return absl::DataLossError(absl::StrCat("downloaded ", filename, " of ", ctx.id.repo_id, " is corrupt: its ",
                                              check_sha256 ? "sha256" : "git sha1", " is ", got, ", the hub says ",
                                              etag, "; the download was deleted, run again to fetch it anew"));
    }
  }
  if (::rename(incomplete.c_str(), blob.c_str()) != 0)
    return ErrnoStatus(errno, absl::StrCat("renaming ", incomplete.string()));
  return absl::OkStatus();
}

// snapshots/<commit>/<file> -> ../../blobs/<etag>, relative as huggingface_hub
// writes it (os.path.relpath), replaced atomically.
absl::Status LinkIntoSnapshot(const fs::path& blob, const fs::path& pointer) {
  std::error_code ec;
  fs::create_directories(pointer.parent_path(), ec);
  if (ec) return absl::InternalError(absl::StrCat("creating ", pointer.parent_path().string(), ": ", ec.message()));
  const fs::path target = blob.lexically_relative(pointer.parent_path());
  static std::atomic<int> counter{0};
  const fs::path tmp = pointer.string() + absl::StrCat(".tmp.", ::getpid(), ".", counter++);
  fs::remove(tmp, ec);
  fs::create_symlink(target, tmp, ec);
  if (ec) return absl::InternalError(absl::StrCat("symlinking ", pointer.string(), ": ", ec.message()));
  fs::rename(tmp, pointer, ec);
  if (ec) return absl::InternalError(absl::StrCat("renaming ", tmp.string(), ": ", ec.message()));
  return absl::OkStatus();
}

// hf_hub_download for one file of a resolved commit: HEAD for the metadata,
// reuse of a blob another revision already fetched, else a download.
absl::Status EnsureFile(const Context& ctx, const std::string& commit, const std::string& filename) {
  const fs::path pointer = ctx.repo_dir / "snapshots" / commit / filename;
  std::error_code ec;
  if (fs::exists(pointer, ec)) return absl::OkStatus();
  const std::string url =
      absl::StrCat(ctx.options->endpoint, "/", ctx.id.repo_id, "/resolve/", commit, "/", EscapePath(filename));
  HttpRequest head = ctx.Request("HEAD", url);
  head.headers.push_back("Accept-Encoding: identity");  // sizes of the file, not of a compressed body
  INTERNVL_ASSIGN_OR_RETURN(HttpResponse meta, PerformHttp(head));
  // Relative redirects (a renamed repo) are followed, absolute ones (the CDN
  // of an LFS file) are not: their headers are what we need, as
  // huggingface_hub's _request_wrapper(follow_relative_redirects=True).
  for (int hops = 0; hops < kMaxRelativeRedirects && meta.status >= 300 && meta.status < 400 &&
                     absl::StartsWith(meta.Header("location"), "/");
       ++hops) {
    head.url = Origin(ctx.options->endpoint) + meta.Header("location");
    INTERNVL_ASSIGN_OR_RETURN(meta, PerformHttp(head));
  }
  if (meta.status < 200 || meta.status >= 400) return HttpError(ctx, meta, filename);
  std::string etag = NormalizeEtag(meta.Header("x-linked-etag"));
  if (etag.empty()) etag = NormalizeEtag(meta.Header("etag"));
  if (etag.empty() || absl::StrContains(etag, "/") || etag == "." || etag == "..")
    return absl::UnavailableError(
        absl::StrCat("the hub sent no usable ETag for ", filename, " (", url, "); is HF_ENDPOINT a Hugging Face hub?"));
  int64_t size = -1;
  std::string size_text = meta.Header("x-linked-size");
  if (size_text.empty()) size_text = meta.Header("content-length");
  if (!size_text.empty() && !absl::SimpleAtoi(size_text, &size)) size = -1;
  std::string location = meta.Header("location");
  if (location.empty())
    location = url;
  else if (absl::StartsWith(location, "/"))
    location = Origin(ctx.options->endpoint) + location;

  const fs::path blob = ctx.repo_dir / "blobs" / etag;
  fs::create_directories(blob.parent_path(), ec);
  if (ec) return absl::InternalError(absl::StrCat("creating ", blob.parent_path().string(), ": ", ec.message()));
  INTERNVL_ASSIGN_OR_RETURN(BlobLock lock, BlobLock::Acquire(ctx.locks_dir / (etag + ".lock")));
  if (!fs::exists(blob, ec)) INTERNVL_RETURN_IF_ERROR(DownloadBlob(ctx, location, blob, etag, size, filename));
  return LinkIntoSnapshot(blob, pointer);
}

// refs/<revision> <- the bare commit hash (no newline, as huggingface_hub
// writes it), replaced atomically through a temp name unique to this writer:
// concurrent loads of one model race here.
absl::Status WriteRef(const fs::path& ref, const std::string& commit) {
  static std::atomic<int> counter{0};
  std::error_code ec;
  fs::create_directories(ref.parent_path(), ec);
  const fs::path tmp = absl::StrCat(ref.string(), ".tmp.", ::getpid(), ".", counter++);
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoStatus(errno, absl::StrCat("creating ", tmp.string()));
  absl::Status st = WriteAll(fd, commit.data(), commit.size(), tmp);
  ::close(fd);
  if (st.ok() && ::rename(tmp.c_str(), ref.c_str()) != 0)
    st = ErrnoStatus(errno, absl::StrCat("renaming to ", ref.string()));
  if (!st.ok()) fs::remove(tmp, ec);
  return st;
}

absl::StatusOr<std::string> OfflineSnapshot(const Context& ctx) {
  auto commit = CachedCommit(ctx.id, ctx.cache_dir);
  if (!commit.ok())
    return absl::FailedPreconditionError(
        absl::StrCat("HF_HUB_OFFLINE is set and model ", ctx.id.repo_id, "@", ctx.id.revision, " is not in the cache (",
                     commit.status().message(), "); unset HF_HUB_OFFLINE to download it"));
  const fs::path snapshot = ctx.repo_dir / "snapshots" / *commit;
  INTERNVL_ASSIGN_OR_RETURN(std::string missing, FirstMissing(snapshot));
  if (!missing.empty())
    return absl::FailedPreconditionError(absl::StrCat(
        "HF_HUB_OFFLINE is set and ", missing, " of model ", ctx.id.repo_id, "@", ctx.id.revision,
        " is not in the cache (", (snapshot / missing).string(), "); unset HF_HUB_OFFLINE to download it"));
  return snapshot.string();
}

}  // namespace

HubOptions HubOptions::FromEnv() {
  HubOptions o;
  if (const char* e = std::getenv("HF_ENDPOINT"); e != nullptr && *e) o.endpoint = e;
  while (absl::EndsWith(o.endpoint, "/")) o.endpoint.pop_back();
  for (const char* name : {"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"}) {
    if (const char* t = std::getenv(name); t != nullptr && *t) {
      o.token = std::string(absl::StripAsciiWhitespace(t));
      break;
    }
  }
  if (o.token.empty()) {  // the file `huggingface-cli login` writes
    std::string path;
    if (const char* p = std::getenv("HF_TOKEN_PATH"); p != nullptr && *p) {
      path = p;
    } else if (const char* h = std::getenv("HF_HOME"); h != nullptr && *h) {
      path = (fs::path(h) / "token").string();
    } else {
      const char* home = std::getenv("HOME");
      path = (fs::path(home != nullptr ? home : "/root") / ".cache" / "huggingface" / "token").string();
    }
    if (auto t = ReadFile(path, 4096); t.ok()) o.token = std::string(absl::StripAsciiWhitespace(*t));
  }
  o.cache_dir = HfHubCacheDir();
  o.offline = HfHubOffline();
  o.progress = ::isatty(STDERR_FILENO) && !EnvTrue("HF_HUB_DISABLE_PROGRESS_BARS");
  return o;
}

const std::vector<std::string>& TokenizerFiles() {
  static const auto* files = new std::vector<std::string>{
      "tokenizer_config.json", "tokenizer.json",          "vocab.json", "merges.txt", "tokenizer.model",
      "added_tokens.json",     "special_tokens_map.json",
  };
  return *files;
}

absl::StatusOr<std::vector<std::string>> SelectModelFiles(const std::vector<std::string>& repo_files) {
  const std::set<std::string> have(repo_files.begin(), repo_files.end());
  if (!have.count(kConfig)) return absl::NotFoundError("the repo has no config.json: it is not a transformers model");
  std::vector<std::string> out = {kConfig};
  if (have.count(kGenerationConfig)) out.push_back(kGenerationConfig);
  for (const auto& f : TokenizerFiles())
    if (have.count(f)) out.push_back(f);
  if (have.count(kWeightsIndex)) {
    out.push_back(kWeightsIndex);  // its shards follow once it is read
  } else if (have.count(kWeights)) {
    out.push_back(kWeights);
  } else {
    return absl::NotFoundError(
        "the repo has neither model.safetensors nor model.safetensors.index.json (only safetensors weights are "
        "supported)");
  }
  return out;
}

absl::StatusOr<std::string> EnsureModelDownloaded(absl::string_view repo_id, absl::string_view revision,
                                                  const HubOptions& options) {
  Context ctx;
  INTERNVL_ASSIGN_OR_RETURN(ctx.id, ParseHfModelId(absl::StrCat(repo_id, "@", revision.empty() ? "main" : revision)));
  ctx.options = &options;
  ctx.cache_dir = options.cache_dir.empty() ? HfHubCacheDir() : options.cache_dir;
  ctx.repo_dir = HfRepoCacheDir(ctx.id.repo_id, ctx.cache_dir);
  ctx.locks_dir = fs::path(ctx.cache_dir) / ".locks" / ctx.repo_dir.filename();

  if (options.offline) return OfflineSnapshot(ctx);
  if (IsCommitHash(ctx.id.revision)) {  // immutable: a complete snapshot needs no request
    const fs::path snapshot = ctx.repo_dir / "snapshots" / absl::AsciiStrToLower(ctx.id.revision);
    auto missing = FirstMissing(snapshot);
    if (missing.ok() && missing->empty()) return snapshot.string();
  }

  // Which commit the revision names now, and the repo's files.
  const std::string api =
      absl::StrCat(options.endpoint, "/api/models/", ctx.id.repo_id, "/revision/", EscapePathSegment(ctx.id.revision));
  HttpRequest api_request = ctx.Request("GET", api);
  api_request.follow_redirects = true;  // a renamed repo redirects to its new name on the same host
  auto info = PerformHttp(api_request);
  if (!info.ok()) {
    if (info.status().code() == absl::StatusCode::kUnavailable) {
      if (auto cached = OfflineSnapshot(ctx); cached.ok()) {
        std::cerr << "warning: cannot reach " << options.endpoint << " (" << info.status().message()
                  << "); using the cached snapshot " << *cached << "\n";
        return cached;
      }
      return absl::UnavailableError(absl::StrCat("cannot reach the Hugging Face hub at ", options.endpoint, " for ",
                                                 ctx.id.repo_id, " (", info.status().message(),
                                                 "); check the network or HF_ENDPOINT"));
    }
    return info.status();
  }
  if (info->status != 200) return HttpError(ctx, *info, "");
  const nlohmann::json j = nlohmann::json::parse(info->body, nullptr, false);
  if (j.is_discarded() || !j.contains("sha") || !j["sha"].is_string() || !IsCommitHash(j["sha"].get<std::string>()))
    return absl::UnavailableError(absl::StrCat(api, " did not return a model revision (JSON with a commit 'sha')"));
  const std::string commit = absl::AsciiStrToLower(j["sha"].get<std::string>());
  std::vector<std::string> repo_files;
  if (j.contains("siblings") && j["siblings"].is_array())
    for (const auto& s : j["siblings"])
      if (s.contains("rfilename") && s["rfilename"].is_string())
        repo_files.push_back(s["rfilename"].get<std::string>());
  auto files = SelectModelFiles(repo_files);
  if (!files.ok())
    return absl::Status(files.status().code(),
                        absl::StrCat("model ", ctx.id.repo_id, "@", ctx.id.revision, ": ", files.status().message()));
  for (const auto& f : *files) INTERNVL_RETURN_IF_ERROR(EnsureFile(ctx, commit, f));

  const fs::path snapshot = ctx.repo_dir / "snapshots" / commit;
  if (std::find(files->begin(), files->end(), kWeightsIndex) != files->end()) {
    INTERNVL_ASSIGN_OR_RETURN(auto shards, IndexShards(snapshot / kWeightsIndex));
    const std::set<std::string> listed(repo_files.begin(), repo_files.end());
    for (const auto& s : shards) {
      if (!listed.count(s))
        return absl::NotFoundError(absl::StrCat("model ", ctx.id.repo_id, "@", ctx.id.revision, ": ", kWeightsIndex,
                                                " lists shard ", s, " which the repo does not have"));
      INTERNVL_RETURN_IF_ERROR(EnsureFile(ctx, commit, s));
    }
  }
  if (ctx.id.revision != commit) INTERNVL_RETURN_IF_ERROR(WriteRef(ctx.repo_dir / "refs" / ctx.id.revision, commit));
  return snapshot.string();
}

absl::StatusOr<std::string> ResolveOrDownloadModel(absl::string_view model, const HubOptions& options) {
  std::error_code ec;
  if (model.empty()) return absl::InvalidArgumentError("--model is empty");
  if (fs::is_directory(std::string(model), ec)) return std::string(model);
  auto id = ParseHfModelId(model);
  if (!id.ok()) return absl::NotFoundError(id.status().message());
  return EnsureModelDownloaded(id->repo_id, id->revision, options);
}

absl::StatusOr<std::string> ResolveOrDownloadModel(absl::string_view model) {
  return ResolveOrDownloadModel(model, HubOptions::FromEnv());
}

}  // namespace internvl::hub
