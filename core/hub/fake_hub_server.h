// A small Hugging Face hub on loopback for tests: the URL scheme, headers and
// redirects of the real hub (as huggingface_hub's file_download.py relies on
// them), with switches for failures. Thread per connection, one request per
// connection ("Connection: close").
//
//   GET  /api/models/{repo}/revision/{rev}    {"id", "sha", "siblings": [{"rfilename"}]}
//   HEAD|GET /{repo}/resolve/{rev}/{file}     small file: 200, ETag = git blob sha1, body
//                                             LFS file: 302 to {endpoint}/lfs/<sha256> (the "CDN"),
//                                             ETag = sha1 of the pointer, X-Linked-Etag = sha256,
//                                             X-Linked-Size; both X-Repo-Commit
//   GET  /lfs/<sha256>                        the content; Range: bytes=N- -> 206
// Errors carry X-Error-Code (RepoNotFound, RevisionNotFound, EntryNotFound,
// GatedRepo) as the hub's do.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"

namespace internvl::hub::testing {

class FakeHubServer {
 public:
  struct File {
    std::string name;
    std::string content;
    bool lfs = false;
  };
  struct Repo {
    std::string id;      // "ORG/NAME"
    std::string commit;  // 40 hex; "main" resolves to it
    std::vector<File> files;
  };
  struct Request {
    std::string method, path, range, authorization;
  };

  static absl::StatusOr<std::unique_ptr<FakeHubServer>> Start(std::vector<Repo> repos);
  ~FakeHubServer();

  std::string endpoint() const;  // "http://127.0.0.1:PORT"
  std::vector<Request> requests() const;
  void ClearRequests();

  // Switches (any thread, any time):
  std::atomic<int> force_status{0};         // answer every request with this status (404, 401, 500)
  std::atomic<bool> gated{false};           // 401 without "Authorization: Bearer <token>", 403 with another
  std::string token = "hf_test_token";      // set before requests are made
  std::atomic<int64_t> cut_body_after{-1};  // LFS bodies: send this many bytes, then drop the connection
  std::atomic<bool> corrupt_body{false};    // LFS bodies: flip a byte
  std::atomic<int> slow_body_ms{0};         // LFS bodies: pause this long between 16 KiB chunks
  std::atomic<bool> ignore_range{false};
  // Old repo id -> new one: 307 with a relative Location, as the hub answers for renamed repos.
  std::map<std::string, std::string> renamed;  // set before requests    // answer Range requests with a full 200

 private:
  FakeHubServer() = default;
  void AcceptLoop();
  void Serve(int fd);
  void Respond(int fd, const Request& req);

  struct Blob {
    std::string content, sha256, git_sha1, pointer_sha1;
    bool lfs = false;
  };
  std::map<std::string, Repo> repos_;
  std::map<std::string, Blob> blobs_;              // by "repo\nfile"
  std::map<std::string, std::string> lfs_by_sha_;  // sha256 -> content
  int listen_fd_ = -1;
  int port_ = 0;
  std::thread acceptor_;
  mutable std::mutex mu_;
  std::vector<Request> requests_;
  std::vector<std::thread> workers_;
};

}  // namespace internvl::hub::testing
