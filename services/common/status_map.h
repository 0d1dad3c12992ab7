// The one mapping between absl::Status (used everywhere inside) and
// grpc::Status (only at the RPC boundary). The canonical codes are the same
// set in both libraries, so codes map one to one and messages are kept.
#pragma once

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace internvl::services {

grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace internvl::services

namespace internvl::services {

// "OK", "INVALID_ARGUMENT", ... (for metric labels and logs).
const char* GrpcCodeName(grpc::StatusCode code);

}  // namespace internvl::services
