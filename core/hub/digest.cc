#include "core/hub/digest.h"

#include <openssl/evp.h>

#include <cstdio>

#include "absl/strings/str_cat.h"

namespace internvl::hub {

struct StreamingDigest::Ctx {
  EVP_MD_CTX* md = nullptr;
  ~Ctx() { EVP_MD_CTX_free(md); }
};

StreamingDigest::StreamingDigest(Algorithm algorithm) : algorithm_(algorithm), ctx_(std::make_unique<Ctx>()) {
  ctx_->md = EVP_MD_CTX_new();
  Reset();
}

StreamingDigest::~StreamingDigest() = default;

void StreamingDigest::Reset() {
  EVP_DigestInit_ex(ctx_->md, algorithm_ == Algorithm::kSha256 ? EVP_sha256() : EVP_sha1(), nullptr);
}

void StreamingDigest::Update(const void* data, size_t size) { EVP_DigestUpdate(ctx_->md, data, size); }

std::string StreamingDigest::HexDigest() {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_DigestFinal_ex(ctx_->md, out, &n);
  std::string hex;
  hex.reserve(2 * n);
  char buf[3];
  for (unsigned int i = 0; i < n; ++i) {
    std::snprintf(buf, sizeof(buf), "%02x", out[i]);
    hex += buf;
  }
  Reset();
  return hex;
}

std::string Sha256Hex(absl::string_view data) {
  StreamingDigest d(StreamingDigest::Algorithm::kSha256);
  d.Update(data.data(), data.size());
  return d.HexDigest();
}

std::string GitBlobSha1Hex(absl::string_view data) {
  StreamingDigest d(StreamingDigest::Algorithm::kSha1);
  const std::string header = absl::StrCat("blob ", data.size());
  d.Update(header.data(), header.size() + 1);  // includes the '\0'
  d.Update(data.data(), data.size());
  return d.HexDigest();
}

}  // namespace internvl::hub
