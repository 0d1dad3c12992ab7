#include "core/net.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <mutex>
#include <random>
#include <unordered_set>

#include "absl/strings/str_cat.h"

namespace internvl {

namespace {

// Binds a loopback TCP socket to `port` (0: the kernel's choice) and returns
// the bound port, or -1 when it is taken.
int TryBindLoopback(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  socklen_t len = sizeof(addr);
  int bound = -1;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0)
    bound = ntohs(addr.sin_port);
  ::close(fd);
  return bound;
}

}  // namespace

absl::StatusOr<int> PickFreeLoopbackPort() {
  // Below Linux's ephemeral range (32768-60999 by default): a port the
  // kernel hands out for bind(0) is also what outgoing connections take, so
  // one could grab it between this check and the server's bind.
  static std::atomic<uint64_t> counter{0};
  std::mt19937_64 rng(static_cast<uint64_t>(::getpid()) * 0x9E3779B97F4A7C15ULL ^
                      std::chrono::steady_clock::now().time_since_epoch().count() ^ counter.fetch_add(1));
  constexpr int kLow = 20000, kHigh = 32000;
  // Never the same port twice in one process: a port handed out is often
  // bound only seconds later (a child loading a model first), and a second
  // pick in that window would find it free too. (A CI run once saw a test's
  // child find its port taken; this rules out the in-process cause.) The set
  // holds at most the 12000 ports of the range; past that, bind(0) below.
  static std::mutex mu;
  static auto* handed_out = new std::unordered_set<int>();
  std::lock_guard<std::mutex> lock(mu);
  for (int attempt = 0; attempt < 64; ++attempt) {
    const int port = kLow + static_cast<int>(rng() % (kHigh - kLow));
    if (handed_out->count(port) == 0 && TryBindLoopback(port) == port) {
      handed_out->insert(port);
      return port;
    }
  }
  const int port = TryBindLoopback(0);
  if (port < 0) return absl::InternalError(absl::StrCat("bind: ", std::strerror(errno)));
  return port;
}

}  // namespace internvl
