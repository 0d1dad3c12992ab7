#include "core/status.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace internvl {

absl::Status Annotate(const absl::Status& status, absl::string_view context) {
  if (status.ok()) return status;
  return absl::Status(status.code(), absl::StrCat(context, ": ", status.message()));
}

absl::Status BusyError(absl::string_view why) { return absl::ResourceExhaustedError(absl::StrCat(kBusyPrefix, why)); }

bool IsBusy(const absl::Status& status) {
  return status.code() == absl::StatusCode::kResourceExhausted && absl::StrContains(status.message(), kBusyPrefix);
}

}  // namespace internvl
