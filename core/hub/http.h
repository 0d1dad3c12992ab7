// A minimal blocking HTTP client over libcurl for talking to the hub: one
// request per call, response headers of the last hop, the body either kept
// (small JSON) or streamed to a sink (downloads). Transport failures
// (refused, reset, cut mid-body, stalled) are UNAVAILABLE with curl's message;
// HTTP error statuses are returned as responses for the caller to map.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace internvl::hub {

struct HttpRequest {
  std::string method = "GET";  // GET or HEAD
  std::string url;
  std::vector<std::string> headers;  // "Name: value"
  bool follow_redirects = false;
  // >= 0: ask for the bytes from this offset on (Range: bytes=N-).
  int64_t range_from = -1;
  long connect_timeout_s = 10;
  // A transfer that receives nothing for this long is abandoned (UNAVAILABLE).
  long stall_timeout_s = 60;
  // When set, 2xx bodies go here instead of HttpResponse::body; a non-OK
  // status aborts the transfer and is returned by Perform. Non-2xx bodies
  // (error pages) are always kept in HttpResponse::body.
  std::function<absl::Status(long status, const std::map<std::string, std::string>& headers, const char* data,
                             size_t size)>
      on_body;
  // Called now and then with the bytes received so far in this request.
  std::function<void(int64_t received)> on_progress;
};

struct HttpResponse {
  long status = 0;
  std::map<std::string, std::string> headers;  // lower-case names, last hop only
  std::string body;
  std::string Header(const std::string& lower_name) const {
    auto it = headers.find(lower_name);
    return it == headers.end() ? std::string() : it->second;
  }
};

absl::StatusOr<HttpResponse> PerformHttp(const HttpRequest& request);

// Percent-encodes one URL path segment (RFC 3986 unreserved kept).
std::string EscapePathSegment(const std::string& segment);

}  // namespace internvl::hub
