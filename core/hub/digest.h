// Streaming SHA-256 / SHA-1 (OpenSSL EVP) for verifying hub downloads: LFS
// files are named by the sha256 of their content, small files by their git
// blob sha1 (sha1("blob <size>\0" + content)).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/strings/string_view.h"

namespace internvl::hub {

class StreamingDigest {
 public:
  enum class Algorithm { kSha256, kSha1 };
  explicit StreamingDigest(Algorithm algorithm);
  ~StreamingDigest();
  StreamingDigest(const StreamingDigest&) = delete;
  StreamingDigest& operator=(const StreamingDigest&) = delete;

  void Reset();
  void Update(const void* data, size_t size);
  // Lower-case hex of the digest of everything since the last Reset().
  std::string HexDigest();

 private:
  struct Ctx;
  Algorithm algorithm_;
  std::unique_ptr<Ctx> ctx_;
};

std::string Sha256Hex(absl::string_view data);
// git hash-object: sha1 over "blob <size>\0" followed by the content.
std::string GitBlobSha1Hex(absl::string_view data);

}  // namespace internvl::hub
