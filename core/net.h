// Small socket helpers shared by binaries and test harnesses.
#pragma once

#include "absl/status/statusor.h"

namespace internvl {

// A TCP port on 127.0.0.1 that is free right now (bound to port 0 and
// released): for launching local workers or test servers. Another process
// may take it before the caller binds it; callers that can retry should.
absl::StatusOr<int> PickFreeLoopbackPort();

}  // namespace internvl
