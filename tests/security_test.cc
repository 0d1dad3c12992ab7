// TLS, mutual TLS and bearer tokens, end to end on loopback: a CA made with
// the openssl CLI signs the servers' and the gateway's client certificate;
// the three stage services require client certificates, the gateway serves
// TLS and checks bearer tokens. A call without a token (or with a wrong one)
// is UNAUTHENTICATED, one with it is served through the mTLS stages; the
// services refuse clients without a certificate or with one from another
// CA; a plaintext client cannot talk to the TLS gateway.
#include "services/common/security.h"

#include <chrono>
#include <fstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/files.h"
#include "core/testing/fixtures.h"
#include "gateway/client.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/create_channel.h"
#include "gtest/gtest.h"
#include "services/common/testing/harness.h"

namespace internvl::gateway {
namespace {

namespace st = ::internvl::services::testing;
constexpr char kToken[] = "test-token-0123456789abcdef";

// The gateway's OpenAI-compatible HTTP port (picked once).
int HttpPort() {
  static const int port = st::PickFreePort().value_or(0);
  return port;
}

bool Sh(const std::string& cmd) {
  const auto r = ::internvl::testing::RunShell(cmd);
  EXPECT_EQ(r.exit_code, 0) << cmd << "\n" << r.err;
  return r.exit_code == 0;
}

// A CA and a certificate it signs for `name` (localhost / 127.0.0.1 SANs).
void MakeCa(const std::string& dir, const std::string& ca) {
  Sh(absl::StrCat("cd ", dir, " && openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=", ca, " -keyout ", ca,
                  ".key -out ", ca, ".pem 2>/dev/null"));
}
void MakeCert(const std::string& dir, const std::string& ca, const std::string& name) {
  Sh(absl::StrCat("cd ", dir, " && openssl req -newkey rsa:2048 -nodes -subj /CN=", name, " -keyout ", name,
                  ".key -out ", name, ".csr 2>/dev/null && printf 'subjectAltName=DNS:localhost,IP:127.0.0.1' > ", name,
                  ".ext && openssl x509 -req -in ", name, ".csr -CA ", ca, ".pem -CAkey ", ca,
                  ".key -CAcreateserial -days 2 -extfile ", name, ".ext -out ", name, ".pem 2>/dev/null"));
}

// Waits for "serving ..." in the log (health checks would need TLS too).
absl::Status WaitForLog(st::Subprocess* p, absl::Duration timeout) {
  const absl::Time end = absl::Now() + timeout;
  while (absl::Now() < end) {
    if (absl::StrContains(p->ReadLog(), "serving ")) return absl::OkStatus();
    if (!p->Running()) return absl::FailedPreconditionError(p->ReadLog());
    absl::SleepFor(absl::Milliseconds(100));
  }
  return absl::DeadlineExceededError(p->ReadLog());
}

class SecurityTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const auto fixtures = ::internvl::testing::FixturesDir();
    if (!fixtures) return;
    fixtures_ = new std::string(*fixtures);
    dir_ = new std::string(::internvl::testing::TempDir());
    const std::string& d = *dir_;
    MakeCa(d, "ca");
    MakeCert(d, "ca", "server");
    MakeCert(d, "ca", "gateway-client");
    MakeCa(d, "rogue");
    MakeCert(d, "rogue", "rogue-client");
    std::ofstream(d + "/tokens") << "# one per line\n" << kToken << "\n";
    const std::string model = *fixtures_ + "/tiny-qwen2";
    const std::vector<std::string> mtls = {
        "--tls-cert-file",      d + "/server.pem", "--tls-key-file",  d + "/server.key",
        "--tls-client-ca-file", d + "/ca.pem",     "--grace-seconds", "2"};
    auto spawn = [&](const std::string& bin, std::vector<std::string> args, const std::string& log) {
      args.insert(args.end(), mtls.begin(), mtls.end());
      auto p = st::SpawnServer(bin, std::move(args), d + "/" + log);
      EXPECT_TRUE(p.ok()) << p.status();
      return new st::ServerProcess(std::move(*p));
    };
    preprocess_ = spawn(INTERNVL_PREPROCESS_BIN, {}, "preprocess.log");
    encoder_ = spawn(INTERNVL_VISION_ENCODER_BIN, {"--model", model, "--dtype", "fp32"}, "vision.log");
    decoder_ = spawn(INTERNVL_LLM_DECODER_BIN, {"--model", model, "--dtype", "fp32"}, "decoder.log");
    auto gw = st::SpawnServer(INTERNVL_GATEWAY_BIN,
                              {"--model",
                               model,
                               "--preprocess-addr",
                               "localhost:" + std::to_string(preprocess_->port),
                               "--vision-addr",
                               "localhost:" + std::to_string(encoder_->port),
                               "--decoder-addr",
                               "localhost:" + std::to_string(decoder_->port),
                               "--stage-tls-ca-file",
                               d + "/ca.pem",
                               "--stage-tls-cert-file",
                               d + "/gateway-client.pem",
                               "--stage-tls-key-file",
                               d + "/gateway-client.key",
                               "--tls-cert-file",
                               d + "/server.pem",
                               "--tls-key-file",
                               d + "/server.key",
                               "--auth-tokens-file",
                               d + "/tokens",
                               "--grace-seconds",
                               "2",
                               "--openai-port",
                               std::to_string(HttpPort()),
                               "--openai-host",
                               "127.0.0.1"},
                              d + "/gateway.log");
    ASSERT_TRUE(gw.ok()) << gw.status();
    gateway_ = new st::ServerProcess(std::move(*gw));
    for (st::ServerProcess* p : {preprocess_, encoder_, decoder_, gateway_}) {
      const absl::Status ready = WaitForLog(p->process.get(), absl::Seconds(90));
      ASSERT_TRUE(ready.ok()) << ready;
    }
  }
  static void TearDownTestSuite() {
    for (st::ServerProcess* p : {gateway_, decoder_, encoder_, preprocess_}) delete p;
    delete dir_;
    delete fixtures_;
  }
  void SetUp() override {
    if (fixtures_ == nullptr) {
      INTERNVL_REQUIRE_FIXTURES(fixtures);
    }
    ASSERT_NE(gateway_, nullptr);
  }

  static ClientSecurity Tls(const std::string& token) {
    ClientSecurity s;
    s.tls.ca_file = *dir_ + "/ca.pem";
    s.tls.server_name = "localhost";
    s.token = token;
    return s;
  }
  static ChatRequest Hello() {
    ChatRequest r;
    r.question = "Hello, who are you?";
    r.generation.max_new_tokens = 4;
    return r;
  }
  // A health check of a stage service with the given client TLS.
  static grpc::Status Health(const st::ServerProcess& p, const services::ClientTlsOptions& tls) {
    auto creds = services::MakeChannelCredentials(tls);
    EXPECT_TRUE(creds.ok()) << creds.status();
    grpc::ChannelArguments args;
    services::AddTlsChannelArgs(tls, &args);
    auto stub = grpc::health::v1::Health::NewStub(grpc::CreateCustomChannel(p.target(), *creds, args));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    grpc::health::v1::HealthCheckRequest req;
    grpc::health::v1::HealthCheckResponse resp;
    return stub->Check(&ctx, req, &resp);
  }

  static inline std::string* fixtures_ = nullptr;
  static inline std::string* dir_ = nullptr;
  static inline st::ServerProcess *preprocess_ = nullptr, *encoder_ = nullptr, *decoder_ = nullptr, *gateway_ = nullptr;
};

TEST_F(SecurityTest, GatewayServesOnlyCallsWithAValidToken) {
  auto with = ChatClient::Create(gateway_->target(), Tls(kToken));
  ASSERT_TRUE(with.ok()) << with.status();
  auto served = (*with)->Chat(Hello());
  ASSERT_TRUE(served.ok()) << served.status();  // through the mTLS stages
  EXPECT_FALSE(served->token_ids.empty());

  auto without = ChatClient::Create(gateway_->target(), Tls(""));
  ASSERT_TRUE(without.ok());
  EXPECT_EQ((*without)->Chat(Hello()).status().code(), absl::StatusCode::kUnauthenticated);
  auto wrong = ChatClient::Create(gateway_->target(), Tls("not-the-token-0123456789"));
  ASSERT_TRUE(wrong.ok());
  EXPECT_EQ((*wrong)->Chat(Hello()).status().code(), absl::StatusCode::kUnauthenticated);
  // A video upload is refused before it is read.
  ChatRequest video = Hello();
  video.video = std::string(1000, 'x');
  EXPECT_EQ((*without)->Chat(video).status().code(), absl::StatusCode::kUnauthenticated);
  // Plaintext to the TLS port: no handshake, no service.
  ChatClient plain(gateway_->target());
  auto r = plain.Chat(Hello(), nullptr, absl::Seconds(5));
  EXPECT_FALSE(r.ok());
  EXPECT_NE(r.status().code(), absl::StatusCode::kOk);
}

// The OpenAI-compatible HTTP API takes the gateway's TLS files and tokens:
// HTTPS only, the bearer token checked.
TEST_F(SecurityTest, HttpApiIsHttpsWithTheSameTokens) {
  const std::string base = absl::StrCat("https://localhost:", HttpPort(), "/v1/models");
  auto curl = [&](const std::string& args) {
    return ::internvl::testing::RunShell(absl::StrCat("curl -s -o /dev/null -w '%{http_code}' ", args));
  };
  const std::string ca = "--cacert " + *dir_ + "/ca.pem ";
  EXPECT_EQ(curl(ca + "-H 'Authorization: Bearer " + kToken + "' " + base).out, "200");
  EXPECT_EQ(curl(ca + "-H 'Authorization: Bearer wrong' " + base).out, "401");
  EXPECT_EQ(curl(ca + base).out, "401");
  // Not without TLS, and not with a certificate the client does not trust.
  EXPECT_NE(curl(absl::StrCat("http://127.0.0.1:", HttpPort(), "/v1/models")).out, "200");
  EXPECT_NE(curl("-H 'Authorization: Bearer " + std::string(kToken) + "' " + base).exit_code, 0);
}

TEST_F(SecurityTest, ServicesRefuseClientsWithoutAValidCertificate) {
  services::ClientTlsOptions good{*dir_ + "/ca.pem", *dir_ + "/gateway-client.pem", *dir_ + "/gateway-client.key",
                                  "localhost"};
  services::ClientTlsOptions no_cert{*dir_ + "/ca.pem", "", "", "localhost"};
  services::ClientTlsOptions rogue{*dir_ + "/ca.pem", *dir_ + "/rogue-client.pem", *dir_ + "/rogue-client.key",
                                   "localhost"};
  for (const st::ServerProcess* p : {preprocess_, encoder_, decoder_}) {
    EXPECT_TRUE(Health(*p, good).ok()) << p->target();
    EXPECT_FALSE(Health(*p, no_cert).ok()) << p->target();
    EXPECT_FALSE(Health(*p, rogue).ok()) << p->target();
    EXPECT_FALSE(Health(*p, services::ClientTlsOptions{}).ok()) << p->target();  // plaintext
  }
}

TEST(BearerAuth, RefusesShortTokensAndReadsFilesAndEnvironment) {
  const std::string dir = ::internvl::testing::TempDir();
  std::ofstream(dir + "/short") << "abc\n";
  EXPECT_EQ(services::BearerAuth::Load(dir + "/short", nullptr).status().code(), absl::StatusCode::kInvalidArgument);
  std::ofstream(dir + "/empty") << "# nothing\n";
  EXPECT_EQ(services::BearerAuth::Load(dir + "/empty", nullptr).status().code(), absl::StatusCode::kInvalidArgument);
  ::setenv("INTERNVL_TEST_TOKENS", "aaaaaaaaaaaaaaaaaa,bbbbbbbbbbbbbbbbbbbb", 1);
  auto a = services::BearerAuth::Load("", "INTERNVL_TEST_TOKENS");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_TRUE(a->enabled());
  EXPECT_FALSE(services::BearerAuth::Load("", "INTERNVL_UNSET_VARIABLE")->enabled());
  EXPECT_EQ(services::MakeServerCredentials({"", dir + "/x.key", ""}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(services::MakeServerCredentials({dir + "/missing.pem", dir + "/missing.key", ""}).ok());
}

}  // namespace
}  // namespace internvl::gateway
