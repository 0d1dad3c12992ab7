// Transport security and authentication of the gRPC servers and clients:
// TLS with a server certificate, mutual TLS between the services (servers
// that are given a client CA refuse clients without a certificate it
// signed), and bearer tokens at the public entry points (the gateway, the
// all-in-one server, the trainer). Secrets come from files or environment
// variables, never from flag values (which `ps` and manifests show).
// Everything is off by default: plaintext on loopback for the demo; the
// Kubernetes overlays turn it on (deploy/README.md).
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_context.h"

namespace internvl::services {

// A server's TLS files (PEM). No certificate: plaintext.
struct ServerTlsOptions {
  std::string cert_file;
  std::string key_file;
  // When set, clients must present a certificate signed by this CA (mTLS).
  std::string client_ca_file;
  bool enabled() const { return !cert_file.empty(); }
};

// A client's TLS files (PEM). No CA: plaintext.
struct ClientTlsOptions {
  std::string ca_file;    // verifies the server
  std::string cert_file;  // our certificate, for servers that require one
  std::string key_file;
  // Overrides the name checked in the server's certificate (e.g. when
  // connecting by IP to a certificate issued for a service name).
  std::string server_name;
  bool enabled() const { return !ca_file.empty(); }
};

// INVALID_ARGUMENT for half-given pairs (a cert without its key), NOT_FOUND /
// PERMISSION_DENIED for unreadable files.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(const ServerTlsOptions& options);
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(const ClientTlsOptions& options);
// Channel arguments that go with MakeChannelCredentials (the TLS name
// override, when set).
void AddTlsChannelArgs(const ClientTlsOptions& options, grpc::ChannelArguments* args);

// A secret from `file` (first line, whitespace trimmed), else from the
// environment variable `env` ("" when neither is set).
absl::StatusOr<std::string> ReadSecret(const std::string& file, const char* env);

// Bearer-token check of incoming calls: "authorization: Bearer <token>"
// must carry one of the configured tokens (compared in constant time).
// Without tokens every call passes.
class BearerAuth {
 public:
  BearerAuth() = default;
  // Tokens, one per line of `file`, or comma-separated in the environment
  // variable `env`; blank lines and '#' comments skipped.
  static absl::StatusOr<BearerAuth> Load(const std::string& file, const char* env);
  static BearerAuth FromTokens(std::vector<std::string> tokens);

  bool enabled() const { return !tokens_.empty(); }
  // UNAUTHENTICATED (the WWW-Authenticate of gRPC) when enabled and the call
  // has no valid token.
  absl::Status Check(const grpc::ServerContextBase& context) const;
  // The same for an HTTP "Authorization" header value (nullopt: absent).
  absl::Status CheckHeader(std::optional<absl::string_view> value) const;

 private:
  std::vector<std::string> tokens_;
};

// Adds "authorization: Bearer <token>" to a client call (no-op for "").
void AddBearerToken(const std::string& token, grpc::ClientContext* context);

}  // namespace internvl::services
