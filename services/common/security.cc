#include "services/common/security.h"

#include <openssl/crypto.h>

#include <cstdlib>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "core/files.h"
#include "core/status.h"
#include "grpcpp/client_context.h"
#include "grpcpp/support/channel_arguments.h"

namespace internvl::services {
namespace {

constexpr size_t kMaxPemBytes = size_t{1} << 20;

absl::StatusOr<std::string> Pem(const std::string& path, const char* what) {
  absl::StatusOr<std::string> text = ReadFile(path, kMaxPemBytes);
  if (!text.ok()) return Annotate(text.status(), what);
  return text;
}

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(const ServerTlsOptions& o) {
  if (!o.enabled()) {
    if (!o.key_file.empty() || !o.client_ca_file.empty())
      return absl::InvalidArgumentError("TLS: a key or client CA was given without a server certificate");
    return grpc::InsecureServerCredentials();
  }
  if (o.key_file.empty()) return absl::InvalidArgumentError("TLS: the server certificate needs its key file");
  grpc::SslServerCredentialsOptions ssl(o.client_ca_file.empty()
                                            ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                                            : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  INTERNVL_ASSIGN_OR_RETURN(std::string cert, Pem(o.cert_file, "TLS certificate"));
  INTERNVL_ASSIGN_OR_RETURN(std::string key, Pem(o.key_file, "TLS key"));
  ssl.pem_key_cert_pairs.push_back({key, cert});
  if (!o.client_ca_file.empty()) {
    INTERNVL_ASSIGN_OR_RETURN(ssl.pem_root_certs, Pem(o.client_ca_file, "TLS client CA"));
  }
  return grpc::SslServerCredentials(ssl);
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(const ClientTlsOptions& o) {
  if (!o.enabled()) {
    if (!o.cert_file.empty() || !o.key_file.empty())
      return absl::InvalidArgumentError("TLS: a client certificate was given without the CA that checks the server");
    return grpc::InsecureChannelCredentials();
  }
  if (o.cert_file.empty() != o.key_file.empty())
    return absl::InvalidArgumentError("TLS: the client certificate and its key go together");
  grpc::SslCredentialsOptions ssl;
  INTERNVL_ASSIGN_OR_RETURN(ssl.pem_root_certs, Pem(o.ca_file, "TLS CA"));
  if (!o.cert_file.empty()) {
    INTERNVL_ASSIGN_OR_RETURN(ssl.pem_cert_chain, Pem(o.cert_file, "TLS client certificate"));
    INTERNVL_ASSIGN_OR_RETURN(ssl.pem_private_key, Pem(o.key_file, "TLS client key"));
  }
  return grpc::SslCredentials(ssl);
}

void AddTlsChannelArgs(const ClientTlsOptions& o, grpc::ChannelArguments* args) {
  if (o.enabled() && !o.server_name.empty()) args->SetSslTargetNameOverride(o.server_name);
}

absl::StatusOr<std::string> ReadSecret(const std::string& file, const char* env) {
  if (!file.empty()) {
    INTERNVL_ASSIGN_OR_RETURN(std::string text, ReadFile(file, size_t{64} << 10));
    return std::string(absl::StripAsciiWhitespace(text.substr(0, text.find('\n'))));
  }
  const char* value = env != nullptr ? std::getenv(env) : nullptr;
  return value != nullptr ? std::string(absl::StripAsciiWhitespace(value)) : std::string();
}

absl::StatusOr<BearerAuth> BearerAuth::Load(const std::string& file, const char* env) {
  std::vector<std::string> tokens;
  std::string text;
  if (!file.empty()) {
    INTERNVL_ASSIGN_OR_RETURN(text, ReadFile(file, size_t{1} << 20));
  } else if (const char* value = env != nullptr ? std::getenv(env) : nullptr) {
    text = absl::StrReplaceAll(value, {{",", "\n"}});
  }
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line[0] == '#') continue;
    if (line.size() < 16)
      return absl::InvalidArgumentError("auth tokens must be at least 16 characters (use random ones)");
    tokens.emplace_back(line);
  }
  if (!file.empty() && tokens.empty()) return absl::InvalidArgumentError(absl::StrCat(file, " holds no token"));
  return FromTokens(std::move(tokens));
}

BearerAuth BearerAuth::FromTokens(std::vector<std::string> tokens) {
  BearerAuth a;
  a.tokens_ = std::move(tokens);
  return a;
}

absl::Status BearerAuth::Check(const grpc::ServerContextBase& context) const {
  if (tokens_.empty()) return absl::OkStatus();
  const auto& md = context.client_metadata();
  auto it = md.find("authorization");
  if (it == md.end()) return CheckHeader(std::nullopt);
  return CheckHeader(absl::string_view(it->second.data(), it->second.size()));
}

absl::Status BearerAuth::CheckHeader(std::optional<absl::string_view> value) const {
  if (tokens_.empty()) return absl::OkStatus();
  if (!value) return absl::UnauthenticatedError("this server needs \"authorization: Bearer <token>\"");
  constexpr absl::string_view kPrefix = "Bearer ";
  if (!absl::StartsWith(*value, kPrefix)) return absl::UnauthenticatedError("authorization is not a Bearer token");
  const absl::string_view given = value->substr(kPrefix.size());
  bool ok = false;
  for (const std::string& t : tokens_) {
    // Constant time over the token's bytes (lengths are not secret).
    if (t.size() == given.size() && CRYPTO_memcmp(t.data(), given.data(), t.size()) == 0) ok = true;
  }
  return ok ? absl::OkStatus() : absl::UnauthenticatedError("the bearer token is not valid");
}

void AddBearerToken(const std::string& token, grpc::ClientContext* context) {
  if (!token.empty()) context->AddMetadata("authorization", absl::StrCat("Bearer ", token));
}

}  // namespace internvl::services
