// Small socket helpers shared by binaries and test harnesses.
#pragma once

#include "absl/status/statusor.h"

namespace internvl {

// A TCP port on 127.0.0.1 that is free right now (bound and released): for
// launching local workers or test servers. Chosen at random below the
// kernel's ephemeral range, so outgoing connections do not take it before
// the caller binds it, and never twice in one process; another process still
// may take it, and callers that can retry should.
absl::StatusOr<int> PickFreeLoopbackPort();

}  // namespace internvl
