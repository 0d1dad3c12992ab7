// `internvl client chat --addr HOST:PORT ...`: the public API's gRPC client,
// with the same request flags and --json output as `internvl chat`.
#include <iostream>
#include <string>
#include <vector>

#include "cli/args.h"
#include "cli/chat_flags.h"
#include "cli/command.h"
#include "services/common/security.h"
#include "gateway/client.h"

namespace internvl::cli {
namespace {

constexpr char kName[] = "client";
constexpr char kSummary[] = "call a running gateway: `internvl client chat --addr HOST:PORT ...`";

std::vector<FlagSpec> Specs() {
  std::vector<FlagSpec> specs = {
      {"addr", "gateway (or all-in-one server) host:port", true, false, "127.0.0.1:50050"},
      {"timeout-ms", "deadline of the call", true, false, "600000"},
      {"tls-ca", "PEM CA of the gateway's certificate: connect over TLS", true, false, ""},
      {"tls-cert", "PEM client certificate (servers requiring mTLS)", true, false, ""},
      {"tls-key", "PEM key of --tls-cert", true, false, ""},
      {"tls-server-name", "name to check in the server's certificate (default: the host)", true, false, ""},
      {"token-file", "file holding the bearer token (default: $INTERNVL_TOKEN)", true, false, ""},
      {"help", "show this help", false, false, ""},
  };
  for (auto& f : ChatRequestFlags()) specs.push_back(f);
  return specs;
}

int Run(const std::vector<std::string>& argv) {
  const auto specs = Specs();
  if (argv.empty() || argv[0] != "chat") {
    std::cerr << "usage: internvl client chat --addr HOST:PORT [flags]\n"
              << Args::Usage("client chat", kSummary, specs);
    return (!argv.empty() && (argv[0] == "--help" || argv[0] == "-h")) ? 0 : 2;
  }
  auto args = Args::Parse(std::vector<std::string>(argv.begin() + 1, argv.end()), specs);
  if (args.ok() && args->Has("help")) {
    std::cout << Args::Usage("client chat", kSummary, specs);
    return 0;
  }
  absl::StatusOr<ChatRequest> request =
      args.ok() ? ChatRequestFromArgs(*args) : absl::StatusOr<ChatRequest>(args.status());
  if (!request.ok()) {
    ReportError("client chat", request.status());
    std::cerr << Args::Usage("client chat", kSummary, specs);
    return 2;
  }
  auto timeout = args->GetInt("timeout-ms", 600000);
  if (!timeout.ok()) return ReportError("client chat", timeout.status());
  gateway::ClientSecurity security;
  security.tls = {args->GetOr("tls-ca", ""), args->GetOr("tls-cert", ""), args->GetOr("tls-key", ""),
                  args->GetOr("tls-server-name", "")};
  auto token = services::ReadSecret(args->GetOr("token-file", ""), "INTERNVL_TOKEN");
  if (!token.ok()) return ReportError("client chat", token.status());
  security.token = *token;
  auto client = gateway::ChatClient::Create(args->GetOr("addr", "127.0.0.1:50050"), security);
  if (!client.ok()) return ReportError("client chat", client.status());
  auto result = (*client)->Chat(
      *request,
      [](absl::string_view delta) {
        std::cout << delta << std::flush;
        return true;
      },
      absl::Milliseconds(*timeout));
  std::cout << "\n";
  if (!result.ok()) return ReportError("client chat", result.status());
  if (args->Has("json")) std::cout << ChatResultJson(*result) << "\n";
  return 0;
}

static const bool kRegistered = RegisterCommand({kName, kSummary, &Run});

}  // namespace
}  // namespace internvl::cli
