#include "core/hub/fake_hub_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "core/hub/digest.h"
#include "nlohmann/json.hpp"

namespace internvl::hub::testing {
namespace {

constexpr size_t kChunk = 16 * 1024;

bool SendAll(int fd, absl::string_view data) {
  while (!data.empty()) {
    const ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n <= 0) return false;
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

const char* Reason(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 206:
      return "Partial Content";
    case 302:
      return "Found";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 416:
      return "Range Not Satisfiable";
    default:
      return "Error";
  }
}

std::string Head(int status, const std::vector<std::pair<std::string, std::string>>& headers, size_t length) {
  std::string out = absl::StrCat("HTTP/1.1 ", status, " ", Reason(status), "\r\n");
  for (const auto& [k, v] : headers) absl::StrAppend(&out, k, ": ", v, "\r\n");
  absl::StrAppend(&out, "Content-Length: ", length, "\r\nConnection: close\r\n\r\n");
  return out;
}

}  // namespace

absl::StatusOr<std::unique_ptr<FakeHubServer>> FakeHubServer::Start(std::vector<Repo> repos) {
  std::unique_ptr<FakeHubServer> s(new FakeHubServer());
  for (auto& r : repos) {
    for (const auto& f : r.files) {
      Blob b;
      b.content = f.content;
      b.lfs = f.lfs;
      b.sha256 = Sha256Hex(f.content);
      b.git_sha1 = GitBlobSha1Hex(f.content);
      const std::string pointer = absl::StrCat("version https://git-lfs.github.com/spec/v1\noid sha256:", b.sha256,
                                               "\nsize ", f.content.size(), "\n");
      b.pointer_sha1 = GitBlobSha1Hex(pointer);
      if (f.lfs) s->lfs_by_sha_[b.sha256] = f.content;
      s->blobs_[absl::StrCat(r.id, "\n", f.name)] = std::move(b);
    }
    s->repos_[r.id] = std::move(r);
  }
  s->listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s->listen_fd_ < 0) return absl::InternalError("socket");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  if (::bind(s->listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 || ::listen(s->listen_fd_, 64) != 0)
    return absl::InternalError(absl::StrCat("bind/listen on 127.0.0.1:0: ", std::strerror(errno)));
  socklen_t len = sizeof(addr);
  ::getsockname(s->listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
  s->port_ = ntohs(addr.sin_port);
  s->acceptor_ = std::thread([p = s.get()] { p->AcceptLoop(); });
  return s;
}

FakeHubServer::~FakeHubServer() {
  ::shutdown(listen_fd_, SHUT_RDWR);
  if (acceptor_.joinable()) acceptor_.join();
  ::close(listen_fd_);
  std::vector<std::thread> workers;
  {
    std::lock_guard<std::mutex> lock(mu_);
    workers.swap(workers_);
  }
  for (auto& t : workers) t.join();
}

std::string FakeHubServer::endpoint() const { return absl::StrCat("http://127.0.0.1:", port_); }

std::vector<FakeHubServer::Request> FakeHubServer::requests() const {
  std::lock_guard<std::mutex> lock(mu_);
  return requests_;
}

void FakeHubServer::ClearRequests() {
  std::lock_guard<std::mutex> lock(mu_);
  requests_.clear();
}

void FakeHubServer::AcceptLoop() {
  while (true) {
    const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      return;  // shut down
    }
    std::lock_guard<std::mutex> lock(mu_);
    workers_.emplace_back([this, fd] { Serve(fd); });
  }
}

void FakeHubServer::Serve(int fd) {
  std::string data;
  char buf[4096];
  while (!absl::StrContains(data, "\r\n\r\n") && data.size() < 65536) {
    const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;
    data.append(buf, static_cast<size_t>(n));
  }
  Request req;
  std::vector<std::string> lines = absl::StrSplit(data.substr(0, data.find("\r\n\r\n")), "\r\n");
  if (!lines.empty()) {
    std::vector<std::string> first = absl::StrSplit(lines[0], ' ');
    if (first.size() >= 2) {
      req.method = first[0];
      req.path = first[1];
    }
    for (size_t i = 1; i < lines.size(); ++i) {
      auto colon = lines[i].find(':');
      if (colon == std::string::npos) continue;
      const std::string name = absl::AsciiStrToLower(lines[i].substr(0, colon));
      const std::string value(absl::StripAsciiWhitespace(lines[i].substr(colon + 1)));
      if (name == "range") req.range = value;
      if (name == "authorization") req.authorization = value;
    }
  }
  if (!req.method.empty()) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      requests_.push_back(req);
    }
    Respond(fd, req);
  }
  ::shutdown(fd, SHUT_RDWR);
  ::close(fd);
}

void FakeHubServer::Respond(int fd, const Request& req) {
  const bool head = req.method == "HEAD";
  auto reply = [&](int status, std::vector<std::pair<std::string, std::string>> headers, const std::string& body) {
    std::string out = Head(status, headers, body.size());
    if (!head) out += body;
    SendAll(fd, out);
  };
  auto error = [&](int status, const std::string& code, const std::string& commit = "") {
    std::vector<std::pair<std::string, std::string>> h = {{"X-Error-Code", code}, {"Content-Type", "application/json"}};
    if (!commit.empty()) h.push_back({"X-Repo-Commit", commit});
    reply(status, h, nlohmann::json{{"error", code}}.dump());
  };
  if (int forced = force_status.load(); forced != 0) {
    return error(forced, forced == 404 ? "RepoNotFound" : forced == 401 ? "" : "Forced");
  }
  const bool is_lfs_path = absl::StartsWith(req.path, "/lfs/");
  if (gated.load() && !is_lfs_path) {  // the CDN URL is pre-signed, needs no token
    if (req.authorization.empty()) return error(401, "GatedRepo");
    if (req.authorization != absl::StrCat("Bearer ", token)) return error(403, "GatedRepo");
  }

  if (is_lfs_path) {
    auto it = lfs_by_sha_.find(req.path.substr(5));
    if (it == lfs_by_sha_.end()) return error(404, "EntryNotFound");
    std::string body = it->second;
    if (corrupt_body.load() && !body.empty()) body[body.size() / 2] ^= 0x5a;
    int64_t from = 0;
    if (!req.range.empty() && !ignore_range.load()) {
      absl::string_view r = req.range;
      if (!absl::ConsumePrefix(&r, "bytes=") || !absl::SimpleAtoi(r.substr(0, r.find('-')), &from) || from < 0 ||
          from >= static_cast<int64_t>(body.size()))
        return reply(416, {{"Content-Range", absl::StrCat("bytes */", body.size())}}, "");
    }
    const std::string part = body.substr(static_cast<size_t>(from));
    std::vector<std::pair<std::string, std::string>> h = {{"ETag", absl::StrCat("\"", it->first, "\"")},
                                                          {"Accept-Ranges", "bytes"},
                                                          {"Content-Type", "application/octet-stream"}};
    const int status = from > 0 ? 206 : 200;
    if (status == 206)
      h.push_back({"Content-Range", absl::StrCat("bytes ", from, "-", body.size() - 1, "/", body.size())});
    SendAll(fd, Head(status, h, part.size()));
    if (head) return;
    const int64_t cut = cut_body_after.load();
    size_t sent = 0;
    while (sent < part.size()) {
      size_t n = std::min(kChunk, part.size() - sent);
      if (cut >= 0) {
        if (static_cast<int64_t>(sent) >= cut) return;  // drop the connection mid-body
        n = std::min<size_t>(n, static_cast<size_t>(cut) - sent);
      }
      if (!SendAll(fd, absl::string_view(part).substr(sent, n))) return;  // the client went away
      sent += n;
      if (int ms = slow_body_ms.load(); ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    }
    return;
  }

  for (const auto& [from, to] : renamed) {
    for (const std::string prefix : {"/api/models/", "/"}) {
      if (absl::StartsWith(req.path, absl::StrCat(prefix, from, "/")))
        return reply(307, {{"Location", absl::StrCat(prefix, to, req.path.substr(prefix.size() + from.size()))}}, "");
    }
  }
  if (absl::StartsWith(req.path, "/api/models/")) {  // /api/models/ORG/NAME/revision/REV
    std::vector<std::string> p = absl::StrSplit(req.path.substr(12), '/');
    if (p.size() != 4 || p[2] != "revision") return error(404, "RepoNotFound");
    auto repo = repos_.find(absl::StrCat(p[0], "/", p[1]));
    if (repo == repos_.end()) return error(404, "RepoNotFound");
    if (p[3] != "main" && p[3] != repo->second.commit) return error(404, "RevisionNotFound");
    nlohmann::json siblings = nlohmann::json::array();
    for (const auto& f : repo->second.files) siblings.push_back({{"rfilename", f.name}});
    return reply(200, {{"Content-Type", "application/json"}},
                 nlohmann::json{{"id", repo->first}, {"sha", repo->second.commit}, {"siblings", siblings}}.dump());
  }

  // /ORG/NAME/resolve/REV/FILE...
  std::vector<std::string> p = absl::StrSplit(req.path.substr(1), absl::MaxSplits('/', 4));
  if (p.size() != 5 || p[2] != "resolve") return error(404, "RepoNotFound");
  auto repo = repos_.find(absl::StrCat(p[0], "/", p[1]));
  if (repo == repos_.end()) return error(404, "RepoNotFound");
  const std::string& commit = repo->second.commit;
  if (p[3] != "main" && p[3] != commit) return error(404, "RevisionNotFound");
  auto blob = blobs_.find(absl::StrCat(repo->first, "\n", p[4]));
  if (blob == blobs_.end()) return error(404, "EntryNotFound", commit);
  const Blob& b = blob->second;
  if (b.lfs) {
    return reply(302,
                 {{"Location", absl::StrCat(endpoint(), "/lfs/", b.sha256)},
                  {"ETag", absl::StrCat("\"", b.pointer_sha1, "\"")},
                  {"X-Linked-Etag", absl::StrCat("\"", b.sha256, "\"")},
                  {"X-Linked-Size", absl::StrCat(b.content.size())},
                  {"X-Repo-Commit", commit}},
                 "");
  }
  reply(200, {{"ETag", absl::StrCat("\"", b.git_sha1, "\"")}, {"X-Repo-Commit", commit}}, b.content);
}

}  // namespace internvl::hub::testing
