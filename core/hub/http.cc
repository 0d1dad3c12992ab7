#include "core/hub/http.h"

#include <curl/curl.h>

#include <chrono>
#include <mutex>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace internvl::hub {
namespace {

void GlobalInit() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

struct Transfer {
  const HttpRequest* request;
  HttpResponse response;
  CURL* curl;
  absl::Status sink_status;
  // Stall detection: libcurl's LOW_SPEED_* averages over its window, so a
  // server that sends a chunk now and then would never trip it.
  curl_off_t last_bytes = -1;
  std::chrono::steady_clock::time_point last_change = std::chrono::steady_clock::now();
};

size_t OnHeader(char* data, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  absl::string_view line(data, size * n);
  if (absl::StartsWith(line, "HTTP/")) {
    t->response.headers.clear();  // a new hop (redirect, 100-continue)
    return size * n;
  }
  auto colon = line.find(':');
  if (colon == absl::string_view::npos) return size * n;
  std::string name = absl::AsciiStrToLower(absl::StripAsciiWhitespace(line.substr(0, colon)));
  t->response.headers[name] = std::string(absl::StripAsciiWhitespace(line.substr(colon + 1)));
  return size * n;
}

size_t OnBody(char* data, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  long status = 0;
  curl_easy_getinfo(t->curl, CURLINFO_RESPONSE_CODE, &status);
  if (t->request->on_body && status >= 200 && status < 300) {
    t->sink_status = t->request->on_body(status, t->response.headers, data, size * n);
    if (!t->sink_status.ok()) return 0;  // aborts with CURLE_WRITE_ERROR
  } else if (t->response.body.size() < (size_t{1} << 26)) {
    t->response.body.append(data, size * n);
  }
  return size * n;
}

int OnProgress(void* user, curl_off_t, curl_off_t now, curl_off_t, curl_off_t) {
  auto* t = static_cast<Transfer*>(user);
  const auto time = std::chrono::steady_clock::now();
  if (now != t->last_bytes) {
    t->last_bytes = now;
    t->last_change = time;
  } else if (time - t->last_change > std::chrono::seconds(t->request->stall_timeout_s)) {
    t->sink_status = absl::UnavailableError(absl::StrCat(t->request->method, " ", t->request->url, ": no data for ",
                                                         t->request->stall_timeout_s, " s after ", now, " bytes"));
    return 1;  // aborts the transfer
  }
  if (t->request->on_progress) t->request->on_progress(static_cast<int64_t>(now));
  return 0;
}

}  // namespace

std::string EscapePathSegment(const std::string& segment) {
  std::string out;
  static const char kHex[] = "0123456789ABCDEF";
  for (unsigned char c : segment) {
    if (absl::ascii_isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

absl::StatusOr<HttpResponse> PerformHttp(const HttpRequest& request) {
  GlobalInit();
  CURL* curl = curl_easy_init();
  if (curl == nullptr) return absl::InternalError("curl_easy_init failed");
  Transfer t{&request, {}, curl, absl::OkStatus()};
  curl_slist* headers = nullptr;
  for (const auto& h : request.headers) headers = curl_slist_append(headers, h.c_str());
  char error[CURL_ERROR_SIZE] = {0};
  curl_easy_setopt(curl, CURLOPT_URL, request.url.c_str());
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, error);
  if (request.method == "HEAD") curl_easy_setopt(curl, CURLOPT_NOBODY, 1L);
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
  // libcurl keeps a custom Authorization header on same-host redirects only,
  // so a token never reaches the CDN a hub redirect points at.
  curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, request.follow_redirects ? 1L : 0L);
  curl_easy_setopt(curl, CURLOPT_MAXREDIRS, 10L);
  curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, request.connect_timeout_s);
  const std::string range = absl::StrCat(request.range_from, "-");
  if (request.range_from >= 0) curl_easy_setopt(curl, CURLOPT_RANGE, range.c_str());
  curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, &OnHeader);
  curl_easy_setopt(curl, CURLOPT_HEADERDATA, &t);
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, &OnBody);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &t);
  curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, &OnProgress);
  curl_easy_setopt(curl, CURLOPT_XFERINFODATA, &t);
  const CURLcode rc = curl_easy_perform(curl);
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &t.response.status);
  curl_easy_cleanup(curl);
  curl_slist_free_all(headers);
  if (!t.sink_status.ok()) return t.sink_status;
  if (rc != CURLE_OK)
    return absl::UnavailableError(
        absl::StrCat(request.method, " ", request.url, " failed: ", error[0] ? error : curl_easy_strerror(rc)));
  return std::move(t.response);
}

}  // namespace internvl::hub
