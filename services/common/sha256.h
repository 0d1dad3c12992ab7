// SHA-256 (OpenSSL libcrypto) for content-addressed keys: image digests and
// embedding cache keys. A cryptographic hash, so distinct inputs colliding is
// not a practical concern even for inputs chosen by clients.
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"

namespace internvl::services {

using Sha256Digest = std::array<uint8_t, 32>;

class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  Sha256& Update(const void* data, size_t size);
  Sha256& Update(absl::string_view data) { return Update(data.data(), data.size()); }
  // Length-prefixed (8 bytes little-endian) so that concatenated fields
  // cannot be re-split into a different tuple with the same hash input.
  Sha256& UpdateField(absl::string_view data);
  Sha256& UpdateInt(int64_t value);
  Sha256Digest Final();

 private:
  void* ctx_;  // EVP_MD_CTX
};

Sha256Digest Sha256Of(absl::string_view data);
std::string ToHex(const uint8_t* data, size_t size);
inline std::string ToHex(const Sha256Digest& d) { return ToHex(d.data(), d.size()); }

}  // namespace internvl::services
