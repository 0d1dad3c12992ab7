// A blocking client of the public API for users (`internvl client chat`),
// tests and benchmarks: core ChatRequest in, ChatResult out (the same types
// as the in-process ChatPipeline, so results compare directly). Images go
// through Chat, a video through ChatVideo in 1 MiB slices; deltas stream to
// `on_text` as they arrive.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "core/chat/chat_types.h"
#include "internvl/v1/gateway.grpc.pb.h"
#include "services/common/security.h"

namespace internvl::gateway {

// The wire request for `request` (its video, if any, goes separately).
v1::ChatRequest ToProtoRequest(const ChatRequest& request);
// ChatFinal -> ChatResult; token_ids gets the stop id back at the end, as
// the in-process pipeline reports it.
ChatResult FromProtoFinal(const v1::ChatFinal& final);

// How a client reaches a secured gateway: TLS (the CA that signed the
// server's certificate; a client certificate for mTLS) and a bearer token.
struct ClientSecurity {
  services::ClientTlsOptions tls;
  std::string token;
};

class ChatClient {
 public:
  // Plaintext, no token.
  explicit ChatClient(const std::string& address);
  // INVALID_ARGUMENT / NOT_FOUND for unusable TLS files.
  static absl::StatusOr<std::unique_ptr<ChatClient>> Create(const std::string& address,
                                                           const ClientSecurity& security);

  // Calls Chat (or ChatVideo when request.video is set). `on_text` (optional)
  // gets each delta; returning false cancels the call. Errors are the RPC's
  // status (UNAVAILABLE when the gateway cannot be reached).
  absl::StatusOr<ChatResult> Chat(const ChatRequest& request,
                                  const std::function<bool(absl::string_view)>& on_text = nullptr,
                                  absl::Duration timeout = absl::Seconds(600));

  v1::InternVL::Stub* stub() { return stub_.get(); }

 private:
  ChatClient(const std::string& address, const std::shared_ptr<grpc::ChannelCredentials>& credentials,
             const ClientSecurity& security);
  std::unique_ptr<v1::InternVL::Stub> stub_;
  std::string token_;
};

}  // namespace internvl::gateway
