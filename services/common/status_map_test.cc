#include "services/common/status_map.h"

#include "gtest/gtest.h"

namespace internvl::services {
namespace {

TEST(StatusMap, KeepsCodeAndMessageBothWays) {
  const std::pair<absl::Status, grpc::StatusCode> cases[] = {
      {absl::InvalidArgumentError("bad image 2"), grpc::StatusCode::INVALID_ARGUMENT},
      {absl::ResourceExhaustedError("too many"), grpc::StatusCode::RESOURCE_EXHAUSTED},
      {absl::UnavailableError("down"), grpc::StatusCode::UNAVAILABLE},
      {absl::FailedPreconditionError("not ready"), grpc::StatusCode::FAILED_PRECONDITION},
      {absl::DeadlineExceededError("late"), grpc::StatusCode::DEADLINE_EXCEEDED},
      {absl::UnimplementedError("no video"), grpc::StatusCode::UNIMPLEMENTED},
      {absl::InternalError("bug"), grpc::StatusCode::INTERNAL},
      {absl::CancelledError("gone"), grpc::StatusCode::CANCELLED},
  };
  for (const auto& [status, code] : cases) {
    const grpc::Status g = ToGrpcStatus(status);
    EXPECT_EQ(g.error_code(), code) << status;
    EXPECT_EQ(g.error_message(), status.message());
    EXPECT_EQ(FromGrpcStatus(g), status);
  }
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
  EXPECT_TRUE(FromGrpcStatus(grpc::Status::OK).ok());
  EXPECT_STREQ(GrpcCodeName(grpc::StatusCode::RESOURCE_EXHAUSTED), "RESOURCE_EXHAUSTED");
}

}  // namespace
}  // namespace internvl::services
