// Status helpers used across the codebase: absl::Status at every boundary.
#pragma once

#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

// Returns from the enclosing function if `expr` (an absl::Status) is not OK.
#define INTERNVL_RETURN_IF_ERROR(expr)                 \
  do {                                                 \
    ::absl::Status _internvl_status = (expr);          \
    if (!_internvl_status.ok()) return _internvl_status; \
  } while (0)

#define INTERNVL_CONCAT_INNER(a, b) a##b
#define INTERNVL_CONCAT(a, b) INTERNVL_CONCAT_INNER(a, b)

// `INTERNVL_ASSIGN_OR_RETURN(auto x, FunctionReturningStatusOr());`
#define INTERNVL_ASSIGN_OR_RETURN(lhs, expr) \
  INTERNVL_ASSIGN_OR_RETURN_IMPL(INTERNVL_CONCAT(_internvl_sor_, __LINE__), lhs, expr)
#define INTERNVL_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                   \
  if (!tmp.ok()) return std::move(tmp).status();       \
  lhs = std::move(tmp).value()

namespace internvl {

// Prefixes a status message with context ("loading model.safetensors: ...").
absl::Status Annotate(const absl::Status& status, absl::string_view context);

// RESOURCE_EXHAUSTED has two kinds of cause: a request over a size limit
// (prompt tokens, image bytes, tiles...), which will never pass as it is, and
// a server at capacity (its queue full, its calls all open), which a later
// retry may pass. BusyError makes the second, with a message that starts
// with kBusyPrefix; IsBusy tells them apart wherever the status went, gRPC
// included (its message travels unchanged, Annotate only prefixes it). The
// OpenAI-compatible API answers 429 (which clients retry) for busy and 400
// for over a limit.
inline constexpr absl::string_view kBusyPrefix = "server busy: ";
absl::Status BusyError(absl::string_view why);
bool IsBusy(const absl::Status& status);

}  // namespace internvl
