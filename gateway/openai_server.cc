#include "gateway/openai_server.h"

#include <httplib.h>
#include <stdlib.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <map>
#include <mutex>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "core/files.h"
#include "core/hub/http.h"
#include "core/status.h"
#include "services/common/log.h"
#include "services/common/streaming_reactor.h"

namespace internvl::gateway {
namespace {

using json = nlohmann::json;

// Text from the model may hold invalid UTF-8 in theory: replaced, never thrown.
std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

absl::Status Invalid(absl::string_view param, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(param, ": ", what));
}

// data: URLs (base64), file:// under the configured root; nothing remote.
absl::StatusOr<std::string> LoadUrl(const std::string& url, const std::string& param,
                                    const OpenAiServerOptions& options, int64_t max_bytes) {
  if (absl::StartsWith(url, "data:")) {
    const size_t comma = url.find(',');
    if (comma == std::string::npos || !absl::EndsWith(absl::string_view(url).substr(0, comma), ";base64"))
      return Invalid(param, "a data: URL must be base64 (data:<type>;base64,<data>)");
    if (static_cast<int64_t>(url.size() - comma - 1) / 4 * 3 > max_bytes)
      return absl::ResourceExhaustedError(absl::StrCat(param, ": over the limit of ", max_bytes, " bytes"));
    std::string bytes;
    if (!absl::Base64Unescape(absl::string_view(url).substr(comma + 1), &bytes))
      return Invalid(param, "the data: URL is not valid base64");
    if (bytes.empty()) return Invalid(param, "the data: URL is empty");
    return bytes;
  }
  if (absl::StartsWith(url, "file://")) {
    if (options.file_root.empty())
      return Invalid(param, "file:// URLs are not allowed on this server (--openai-file-root)");
    std::error_code ec;
    const std::filesystem::path root = std::filesystem::weakly_canonical(options.file_root, ec);
    const std::filesystem::path path = std::filesystem::weakly_canonical(url.substr(7), ec);
    const std::string r = root.string(), p = path.string();
    if (ec || !absl::StartsWith(p, r.back() == '/' ? r : r + "/"))
      return absl::PermissionDeniedError(absl::StrCat(param, ": the file is outside --openai-file-root"));
    return ReadFile(p, max_bytes);
  }
  if ((absl::StartsWith(url, "http://") || absl::StartsWith(url, "https://")) && options.allow_remote_urls) {
    hub::HttpRequest get;
    get.url = url;
    get.follow_redirects = true;
    get.stall_timeout_s = 30;
    std::string bytes;
    get.on_body = [&](long, const std::map<std::string, std::string>&, const char* data, size_t size) {
      if (static_cast<int64_t>(bytes.size() + size) > max_bytes)
        return absl::ResourceExhaustedError(absl::StrCat(param, ": over the limit of ", max_bytes, " bytes"));
      bytes.append(data, size);
      return absl::OkStatus();
    };
    absl::StatusOr<hub::HttpResponse> got = hub::PerformHttp(get);
    if (!got.ok()) {
      if (got.status().code() == absl::StatusCode::kResourceExhausted) return got.status();
      return Invalid(param, absl::StrCat("cannot fetch ", url, ": ", got.status().message()));
    }
    if (got->status < 200 || got->status >= 300)
      return Invalid(param, absl::StrCat("fetching ", url, " gave HTTP ", got->status));
    if (bytes.empty()) return Invalid(param, absl::StrCat(url, " is empty"));
    return bytes;
  }
  return Invalid(param,
                 "only data: URLs (and file:// under the server's file root) are accepted; this server "
                 "does not fetch remote URLs (--openai-allow-remote-urls)");
}

struct Message {
  std::string text;
  std::vector<std::string> images;
  std::optional<std::string> video;
};

absl::StatusOr<Message> ParseContent(const json& content, const std::string& param, const OpenAiServerOptions& options,
                                     int64_t max_bytes, bool media) {
  Message m;
  if (content.is_string()) {
    m.text = content.get<std::string>();
    return m;
  }
  if (!content.is_array()) return Invalid(param, "content must be a string or a list of parts");
  std::vector<std::string> texts;
  for (size_t i = 0; i < content.size(); ++i) {
    const json& part = content[i];
    const std::string where = absl::StrCat(param, "[", i, "]");
    if (!part.is_object() || !part.contains("type") || !part["type"].is_string())
      return Invalid(where, "a content part is an object with a \"type\"");
    const std::string type = part["type"].get<std::string>();
    if (type == "text") {
      if (!part.contains("text") || !part["text"].is_string()) return Invalid(where, "\"text\" must be a string");
      texts.push_back(part["text"].get<std::string>());
      continue;
    }
    if (type != "image_url" && type != "video_url") return Invalid(where, absl::StrCat("unknown part type ", type));
    if (!media) return Invalid(where, "only user messages carry images or video");
    const json& u = part.contains(type) ? part[type] : json();
    const json url = u.is_object() && u.contains("url") ? u["url"] : u;
    if (!url.is_string()) return Invalid(where, absl::StrCat("\"", type, "\" needs a \"url\" string"));
    INTERNVL_ASSIGN_OR_RETURN(std::string bytes, LoadUrl(url.get<std::string>(), where, options, max_bytes));
    if (type == "image_url") {
      m.images.push_back(std::move(bytes));
    } else {
      if (m.video) return Invalid(where, "one video per request");
      m.video = std::move(bytes);
    }
  }
  m.text = absl::StrJoin(texts, "\n");
  return m;
}

// chat()'s placement of a message's images (see the header).
absl::StatusOr<std::string> PlaceImages(const Message& m, const std::string& param) {
  if (m.images.empty()) return m.text;
  size_t placeholders = 0;
  for (size_t at = m.text.find("<image>"); at != std::string::npos; at = m.text.find("<image>", at + 1)) ++placeholders;
  if (placeholders > 0) {
    if (placeholders != m.images.size())
      return Invalid(param, absl::StrCat(placeholders, " <image> placeholders for ", m.images.size(), " images"));
    return m.text;
  }
  if (m.images.size() == 1) return "<image>\n" + m.text;
  std::string out;
  for (size_t i = 0; i < m.images.size(); ++i) absl::StrAppend(&out, "Image-", i + 1, ": <image>\n");
  return out + m.text;
}

template <typename T>
absl::StatusOr<std::optional<T>> Optional(const json& body, const char* name) {
  if (!body.contains(name) || body[name].is_null()) return std::optional<T>();
  const json& v = body[name];
  if constexpr (std::is_same_v<T, bool>) {
    if (!v.is_boolean()) return Invalid(name, "must be a boolean");
  } else if constexpr (std::is_integral_v<T>) {
    if (!v.is_number_integer()) return Invalid(name, "must be an integer");
  } else {
    if (!v.is_number()) return Invalid(name, "must be a number");
  }
  return std::optional<T>(v.get<T>());
}

// OpenAI request fields this server does not implement, refused with a 400
// naming the field when they ask for something: ignored, the answer would
// silently be to another request than the one sent. Their neutral values (0,
// false, empty, "text", "none"/"auto" without tools) pass, since clients
// often send them by default.
absl::Status RefuseUnsupported(const json& body) {
  auto unsupported = [](const char* field, absl::string_view hint) {
    constexpr absl::string_view kWhat = "is not supported by this server";
    return Invalid(field, hint.empty() ? std::string(kWhat) : absl::StrCat(kWhat, " (", hint, ")"));
  };
  INTERNVL_ASSIGN_OR_RETURN(auto logprobs, Optional<bool>(body, "logprobs"));
  if (logprobs.value_or(false)) return unsupported("logprobs", "");
  INTERNVL_ASSIGN_OR_RETURN(auto top_logprobs, Optional<int64_t>(body, "top_logprobs"));
  if (top_logprobs.value_or(0) != 0) return unsupported("top_logprobs", "");
  // Objects or lists that ask for something when not empty.
  for (const char* field : {"logit_bias", "tools", "functions"}) {
    if (!body.contains(field) || body[field].is_null()) continue;
    const json& v = body[field];
    if (!v.is_object() && !v.is_array()) return Invalid(field, "must be an object or a list");
    if (!v.empty()) return unsupported(field, std::string(field) == "logit_bias" ? "" : "no tool calls");
  }
  for (const char* field : {"tool_choice", "function_call"}) {
    if (!body.contains(field) || body[field].is_null()) continue;
    const json& v = body[field];
    if (!v.is_string() || (v != "none" && v != "auto")) return unsupported(field, "no tool calls");
  }
  if (body.contains("response_format") && !body["response_format"].is_null()) {
    const json& f = body["response_format"];
    if (!f.is_object() || !f.contains("type") || !f["type"].is_string())
      return Invalid("response_format", "must be an object with a \"type\"");
    if (f["type"] != "text")
      return unsupported("response_format", "only {\"type\": \"text\"}: no constrained decoding");
  }
  return absl::OkStatus();
}

// Streamed text as the final response: leading whitespace dropped, a
// whitespace run held until more text follows (so it is dropped at the end),
// as the response's strip.
class StrippedStream {
 public:
  std::string Put(absl::string_view delta) {
    std::string out;
    for (char c : delta) {
      if (absl::ascii_isspace(static_cast<unsigned char>(c))) {
        if (started_) held_ += c;
      } else {
        started_ = true;
        out += held_;
        held_.clear();
        out += c;
      }
    }
    return out;
  }

 private:
  bool started_ = false;
  std::string held_;
};

// One request between the worker that runs it and the HTTP thread that
// answers: deltas, then the final message or an error.
class Exchange : public services::CallCancellation {
 public:
  bool cancelled() const override { return cancelled_.load(); }
  void SetCancelHook(std::function<void()> hook) override {
    std::lock_guard<std::mutex> lock(hook_mu_);
    hook_ = std::move(hook);
    if (hook_ && cancelled_) hook_();
  }
  void Cancel() {
    cancelled_ = true;
    std::lock_guard<std::mutex> lock(hook_mu_);
    if (hook_) hook_();
  }
  // Worker side.
  bool Emit(v1::ChatResponse r) {
    std::lock_guard<std::mutex> lock(mu_);
    if (r.has_final()) {
      final_ = std::move(*r.mutable_final());
    } else {
      deltas_.push_back(std::move(*r.mutable_delta()));
    }
    cv_.notify_all();
    return !cancelled_;
  }
  void Done(absl::Status status) {
    std::lock_guard<std::mutex> lock(mu_);
    done_ = true;
    status_ = std::move(status);
    cv_.notify_all();
  }
  // HTTP side: waits for something new; false once everything was taken.
  bool Next(std::deque<std::string>* deltas, bool* done) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return !deltas_.empty() || done_; });
    deltas->swap(deltas_);
    deltas_.clear();
    *done = done_;
    return true;
  }
  // Waits until the first delta or the end.
  void WaitStarted() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return !deltas_.empty() || done_; });
  }
  bool done() {
    std::lock_guard<std::mutex> lock(mu_);
    return done_;
  }
  absl::Status status() {
    std::lock_guard<std::mutex> lock(mu_);
    return status_;
  }
  v1::ChatFinal final_message() {
    std::lock_guard<std::mutex> lock(mu_);
    return final_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::string> deltas_;
  bool done_ = false;
  absl::Status status_;
  v1::ChatFinal final_;
  std::atomic<bool> cancelled_{false};
  std::mutex hook_mu_;
  std::function<void()> hook_;
};

const char* FinishReason(v1::FinishReason r) {
  switch (r) {
    case v1::FINISH_REASON_LENGTH:
      return "length";
    default:
      return "stop";
  }
}

// The gRPC client's token_ids: the generated ids with the end token back.
std::vector<int> TokenIds(const v1::ChatFinal& f) {
  std::vector<int> ids(f.token_ids().begin(), f.token_ids().end());
  if (f.has_stop_token_id()) ids.push_back(f.stop_token_id());
  return ids;
}

json Usage(const v1::ChatFinal& f) {
  json u = {{"prompt_tokens", f.prompt_tokens()},
            {"completion_tokens", f.completion_tokens()},
            {"total_tokens", f.prompt_tokens() + f.completion_tokens()}};
  if (f.has_scm())  // MiniMonkey's compression: prompt_tokens is the compressed length
    u["scm"] = {{"first_image_token", f.scm().first_image_token()},
                {"high_tokens", f.scm().high_tokens()},
                {"prompt_tokens_before", f.scm().length_before()}};
  return u;
}

void SetError(httplib::Response& res, const absl::Status& status) {
  res.status = HttpStatusFor(status);
  // (A busy server: OpenAI's clients wait this long before their retry.)
  if (res.status == 429) res.set_header("Retry-After", "1");
  res.set_content(ErrorBody(status), "application/json");
}

}  // namespace

OpenAiServerOptions OpenAiOptionsFor(const std::string& model_flag, const std::string& served_name) {
  OpenAiServerOptions o;
  std::error_code ec;
  std::string id = model_flag;
  if (std::filesystem::is_directory(model_flag, ec)) {
    while (id.size() > 1 && id.back() == '/') id.pop_back();
    id = std::filesystem::path(id).filename().string();
  }
  o.model_id = served_name.empty() ? id : served_name;
  for (const std::string& a : {id, model_flag})
    if (a != o.model_id && std::find(o.aliases.begin(), o.aliases.end(), a) == o.aliases.end()) o.aliases.push_back(a);
  return o;
}

absl::StatusOr<ChatCompletionRequest> ParseChatCompletion(const json& body, const OpenAiServerOptions& options,
                                                          int64_t max_media_bytes, int max_images) {
  if (!body.is_object()) return absl::InvalidArgumentError("the body must be a JSON object");
  ChatCompletionRequest out;
  v1::ChatRequest& chat = out.chat;
  // The model.
  if (!body.contains("model") || !body["model"].is_string()) return Invalid("model", "a model id is required");
  const std::string model = body["model"].get<std::string>();
  if (model != options.model_id &&
      std::find(options.aliases.begin(), options.aliases.end(), model) == options.aliases.end())
    return absl::NotFoundError(
        absl::StrCat("The model `", model, "` does not exist; this server serves `", options.model_id, "`"));
  // Messages -> system message, history, question, media.
  if (!body.contains("messages") || !body["messages"].is_array() || body["messages"].empty())
    return Invalid("messages", "a non-empty list of messages is required");
  const json& messages = body["messages"];
  // Media counted before any URL is decoded or fetched.
  int images = 0, videos = 0;
  for (const json& m : messages) {
    if (!m.is_object() || !m.contains("content") || !m["content"].is_array()) continue;
    for (const json& part : m["content"]) {
      if (!part.is_object() || !part.contains("type") || !part["type"].is_string()) continue;
      images += part["type"] == "image_url";
      videos += part["type"] == "video_url";
    }
  }
  if (images > max_images)
    return absl::ResourceExhaustedError(
        absl::StrCat(images, " images, over the limit of ", max_images, " per request"));
  if (videos > 1) return Invalid("messages", "one video per request");
  std::vector<std::string> system;
  std::vector<std::pair<std::string, Message>> turns;  // role, message
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string param = absl::StrCat("messages[", i, "]");
    const json& m = messages[i];
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string())
      return Invalid(param, "a message is an object with a \"role\"");
    const std::string role = m["role"].get<std::string>();
    if (!m.contains("content") || m["content"].is_null()) return Invalid(param, "\"content\" is required");
    INTERNVL_ASSIGN_OR_RETURN(Message parsed,
                              ParseContent(m["content"], param + ".content", options, max_media_bytes, role == "user"));
    if (role == "system" || role == "developer") {
      if (!turns.empty()) return Invalid(param, "system messages come before the conversation");
      system.push_back(parsed.text);
    } else if (role == "user" || role == "assistant") {
      const bool want_user = turns.size() % 2 == 0;
      if ((role == "user") != want_user)
        return Invalid(param, "user and assistant messages must alternate, starting with a user message");
      turns.emplace_back(role, std::move(parsed));
    } else {
      return Invalid(param, absl::StrCat("unsupported role ", role));
    }
  }
  if (turns.empty() || turns.back().first != "user") return Invalid("messages", "the last message must be a user's");
  if (!system.empty()) chat.set_system_message(absl::StrJoin(system, "\n"));
  for (size_t t = 0; t < turns.size(); ++t) {
    Message& m = turns[t].second;
    const std::string param = absl::StrCat("messages (turn ", t / 2 + 1, ")");
    const bool last = t + 1 == turns.size();
    if (m.video && (!last || !m.images.empty()))
      return Invalid(param, "a video goes in the last user message, without images");
    if (m.video) {
      for (size_t k = 0; k + 1 < turns.size(); ++k)
        if (!turns[k].second.images.empty()) return Invalid(param, "a video request carries no images");
      out.video = std::move(*m.video);
    }
    for (std::string& img : m.images) chat.add_images(std::move(img));
    if (turns[t].first == "user") {
      INTERNVL_ASSIGN_OR_RETURN(std::string text, PlaceImages(m, param));
      if (last) {
        chat.set_text(std::move(text));
      } else {
        v1::Turn* turn = chat.add_history();
        turn->set_question(std::move(text));
        turn->set_answer(turns[t + 1].second.text);
      }
    }
  }
  if (chat.text().empty()) return Invalid("messages", "the last user message has no text");
  // Sampling and lengths.
  v1::GenerationSettings* g = chat.mutable_generation();
  INTERNVL_ASSIGN_OR_RETURN(auto n, Optional<int64_t>(body, "n"));
  if (n && *n != 1) return Invalid("n", "only n = 1 is supported");
  INTERNVL_ASSIGN_OR_RETURN(auto max_tokens, Optional<int64_t>(body, "max_completion_tokens"));
  if (!max_tokens) {
    INTERNVL_ASSIGN_OR_RETURN(max_tokens, Optional<int64_t>(body, "max_tokens"));
  }
  if (max_tokens) {
    if (*max_tokens < 1 || *max_tokens > (int64_t{1} << 30)) return Invalid("max_tokens", "must be >= 1");
    g->set_max_new_tokens(static_cast<int32_t>(*max_tokens));
  }
  INTERNVL_ASSIGN_OR_RETURN(auto temperature, Optional<double>(body, "temperature"));
  if (temperature) {
    if (!(*temperature >= 0)) return Invalid("temperature", "must be >= 0");
    if (*temperature > 0) {
      g->set_do_sample(true);
      g->set_temperature(static_cast<float>(*temperature));
    }
  }
  INTERNVL_ASSIGN_OR_RETURN(auto top_p, Optional<double>(body, "top_p"));
  if (top_p) g->set_top_p(static_cast<float>(*top_p));
  INTERNVL_ASSIGN_OR_RETURN(auto top_k, Optional<int64_t>(body, "top_k"));
  if (top_k) g->set_top_k(static_cast<int32_t>(std::clamp<int64_t>(*top_k, -1, 1 << 30)));
  INTERNVL_ASSIGN_OR_RETURN(auto penalty, Optional<double>(body, "repetition_penalty"));
  if (penalty) g->set_repetition_penalty(static_cast<float>(*penalty));
  INTERNVL_ASSIGN_OR_RETURN(auto frequency, Optional<double>(body, "frequency_penalty"));
  INTERNVL_ASSIGN_OR_RETURN(auto presence, Optional<double>(body, "presence_penalty"));
  if (frequency && !(*frequency >= -2 && *frequency <= 2)) return Invalid("frequency_penalty", "must be in [-2, 2]");
  if (presence && !(*presence >= -2 && *presence <= 2)) return Invalid("presence_penalty", "must be in [-2, 2]");
  if (frequency) g->set_frequency_penalty(static_cast<float>(*frequency));
  if (presence) g->set_presence_penalty(static_cast<float>(*presence));
  INTERNVL_ASSIGN_OR_RETURN(auto seed, Optional<int64_t>(body, "seed"));
  if (seed) g->set_seed(static_cast<uint64_t>(*seed));
  INTERNVL_RETURN_IF_ERROR(RefuseUnsupported(body));
  if (body.contains("stop") && !body["stop"].is_null()) {
    const json& stop = body["stop"];
    if (stop.is_string()) {
      g->add_stop(stop.get<std::string>());
    } else if (stop.is_array()) {
      for (const json& s : stop) {
        if (!s.is_string()) return Invalid("stop", "must be a string or a list of strings");
        g->add_stop(s.get<std::string>());
      }
    } else {
      return Invalid("stop", "must be a string or a list of strings");
    }
  }
  // InternVL's own knobs, as extra body fields.
  INTERNVL_ASSIGN_OR_RETURN(auto max_num, Optional<int64_t>(body, "max_num"));
  if (max_num) {
    if (*max_num < 1 || *max_num > 1024) return Invalid("max_num", "must be in [1, 1024]");
    chat.set_max_num(static_cast<int32_t>(*max_num));
    out.video_settings.set_max_num(static_cast<int32_t>(*max_num));
  }
  // MiniMonkey models: "scm": true and "minimonkey": {"order": "demo"|"eval",
  // "ranges": [A_MIN, A_MAX, B_MIN, B_MAX], "rule": "official"|"paddlemix"}
  // (the gateway checks the values and refuses them for other models).
  INTERNVL_ASSIGN_OR_RETURN(auto scm, Optional<bool>(body, "scm"));
  chat.set_scm(scm.value_or(false));
  if (body.contains("minimonkey") && !body["minimonkey"].is_null()) {
    const json& mm = body["minimonkey"];
    if (!mm.is_object()) return Invalid("minimonkey", "must be an object {order, ranges, rule}");
    v1::MiniMonkeyTiling* t = chat.mutable_minimonkey();
    for (const char* key : {"order", "rule"}) {
      if (!mm.contains(key) || mm[key].is_null()) continue;
      if (!mm[key].is_string()) return Invalid("minimonkey", absl::StrCat(key, " must be a string"));
      (std::string(key) == "order" ? *t->mutable_order() : *t->mutable_rule()) = mm[key].get<std::string>();
    }
    if (mm.contains("ranges") && !mm["ranges"].is_null()) {
      const json& r = mm["ranges"];
      if (!r.is_array() || r.size() != 4) return Invalid("minimonkey", "ranges must be [A_MIN, A_MAX, B_MIN, B_MAX]");
      int32_t v[4];
      for (int i = 0; i < 4; ++i) {
        if (!r[i].is_number_integer() || r[i].get<int64_t>() < 1 || r[i].get<int64_t>() > 1024)
          return Invalid("minimonkey", "ranges must be four integers in [1, 1024]");
        v[i] = static_cast<int32_t>(r[i].get<int64_t>());
      }
      t->set_a_min(v[0]);
      t->set_a_max(v[1]);
      t->set_b_min(v[2]);
      t->set_b_max(v[3]);
    }
  }
  INTERNVL_ASSIGN_OR_RETURN(auto segments, Optional<int64_t>(body, "num_segments"));
  if (segments) {
    if (*segments < 1 || *segments > 1024) return Invalid("num_segments", "must be in [1, 1024]");
    out.video_settings.set_num_segments(static_cast<int32_t>(*segments));
  }
  INTERNVL_ASSIGN_OR_RETURN(auto stream, Optional<bool>(body, "stream"));
  out.stream = stream.value_or(false);
  if (body.contains("stream_options") && body["stream_options"].is_object()) {
    INTERNVL_ASSIGN_OR_RETURN(auto usage, Optional<bool>(body["stream_options"], "include_usage"));
    out.include_usage = usage.value_or(false);
  }
  return out;
}

int HttpStatusFor(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kOk:
      return 200;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kOutOfRange:
      return 400;
    case absl::StatusCode::kUnauthenticated:
      return 401;
    case absl::StatusCode::kPermissionDenied:
      return 403;
    case absl::StatusCode::kNotFound:
      return 404;
    case absl::StatusCode::kResourceExhausted:
      // 429 (retried by OpenAI's clients) only where a retry may pass: a
      // request over a size limit is a bad request (core/status.h, IsBusy).
      return IsBusy(status) ? 429 : 400;
    case absl::StatusCode::kUnavailable:
      return 503;
    case absl::StatusCode::kDeadlineExceeded:
      return 504;
    case absl::StatusCode::kUnimplemented:
      return 501;
    default:
      return 500;
  }
}

std::string ErrorBody(const absl::Status& status) {
  const int http = HttpStatusFor(status);
  const char* type = http == 401   ? "authentication_error"
                     : http == 403 ? "permission_error"
                     : http == 404 ? "not_found_error"
                     : http == 429 ? "rate_limit_error"
                     : http >= 500 ? "server_error"
                                   : "invalid_request_error";
  std::string code = absl::AsciiStrToLower(absl::StatusCodeToString(status.code()));
  if (http == 404 && absl::StartsWith(status.message(), "The model")) code = "model_not_found";
  return json{
      {"error", {{"message", std::string(status.message())}, {"type", type}, {"param", nullptr}, {"code", code}}}}
      .dump(-1, ' ', false, json::error_handler_t::replace);
}

absl::StatusOr<std::unique_ptr<OpenAiServer>> OpenAiServer::Start(const OpenAiServerOptions& options,
                                                                  ChatService* service) {
  std::unique_ptr<OpenAiServer> s(new OpenAiServer());
  s->options_ = options;
  s->service_ = service;
  s->created_ = absl::ToUnixSeconds(absl::Now());
  if (options.tls.enabled()) {
    const std::string& ca = options.tls.client_ca_file;
    auto tls = std::make_unique<httplib::SSLServer>(options.tls.cert_file.c_str(), options.tls.key_file.c_str(),
                                                    ca.empty() ? nullptr : ca.c_str());
    if (!tls->is_valid())
      return absl::InvalidArgumentError(absl::StrCat("HTTP API: cannot use the TLS files ", options.tls.cert_file, ", ",
                                                     options.tls.key_file, ca.empty() ? "" : ", ", ca));
    s->server_ = std::move(tls);
  } else {
    s->server_ = std::make_unique<httplib::Server>();
  }
  httplib::Server& http = *s->server_;
  const int threads = std::max(1, options.threads);
  http.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  http.set_payload_max_length(options.max_body_bytes);
  http.set_read_timeout(60, 0);
  http.set_write_timeout(60, 0);
  OpenAiServer* self = s.get();
  // Bodies of errors httplib makes itself (unknown path, body too large...).
  http.set_error_handler(httplib::Server::HandlerWithResponse([](const httplib::Request&, httplib::Response& res) {
    if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
    const absl::Status status = res.status == 413   ? absl::InvalidArgumentError("the request body is too large")
                                : res.status == 404 ? absl::NotFoundError("no such endpoint")
                                                    : absl::InvalidArgumentError("bad request");
    const int code = res.status;
    res.set_content(ErrorBody(status), "application/json");
    res.status = code;
    return httplib::Server::HandlerResponse::Handled;
  }));
  http.Get("/health", [self](const httplib::Request&, httplib::Response& res) {
    const absl::Status admitted = self->service_->metrics()->Admit();
    if (!admitted.ok()) return SetError(res, admitted);
    res.set_content("{\"status\":\"ok\"}", "application/json");
  });
  auto authorized = [self](const httplib::Request& req, httplib::Response& res) {
    const absl::Status s = self->service_->options().auth.CheckHeader(
        req.has_header("Authorization") ? std::optional<absl::string_view>(req.get_header_value("Authorization"))
                                        : std::nullopt);
    if (!s.ok()) SetError(res, s);
    return s.ok();
  };
  http.Get("/v1/models", [self, authorized](const httplib::Request& req, httplib::Response& res) {
    if (!authorized(req, res)) return;
    json model = {
        {"id", self->options_.model_id}, {"object", "model"}, {"created", self->created_}, {"owned_by", "internvl"}};
    res.set_content(Dump(json{{"object", "list"}, {"data", json::array({model})}}), "application/json");
  });
  http.Post("/v1/chat/completions", [self, authorized](const httplib::Request& req, httplib::Response& res) {
    self->ChatCompletions(req, res, authorized(req, res));
  });
  const int port = options.port == 0 ? http.bind_to_any_port(options.host) : options.port;
  if (port <= 0 || (options.port != 0 && !http.bind_to_port(options.host, options.port)))
    return absl::UnavailableError(absl::StrCat("cannot listen on ", options.host, ":", options.port, " (HTTP)"));
  s->port_ = port;
  s->thread_ = std::thread([self] { self->server_->listen_after_bind(); });
  return s;
}

void OpenAiServer::ChatCompletions(const httplib::Request& req, httplib::Response& res, bool authorized) {
  if (!authorized) return;
  const std::string type = absl::AsciiStrToLower(req.get_header_value("Content-Type"));
  if (!absl::StartsWith(type, "application/json")) {
    SetError(res, absl::InvalidArgumentError(absl::StrCat("Content-Type must be application/json, not \"",
                                                          req.get_header_value("Content-Type"), "\"")));
    res.status = 415;
    return;
  }
  services::RpcMetrics* metrics = service_->metrics();
  if (const absl::Status admitted = metrics->Admit(); !admitted.ok()) return SetError(res, admitted);
  json body;
  try {
    body = json::parse(req.body);
  } catch (const json::exception& e) {
    return SetError(res, absl::InvalidArgumentError(absl::StrCat("the body is not valid JSON: ", e.what())));
  }
  const ChatServiceOptions& limits = service_->options();
  auto parsed =
      ParseChatCompletion(body, options_, std::max(limits.max_image_bytes, limits.max_video_bytes), limits.max_images);
  if (!parsed.ok()) return SetError(res, parsed.status());
  auto request = std::make_shared<ChatCompletionRequest>(*std::move(parsed));
  const std::string id = absl::StrCat("chatcmpl-", absl::ToUnixMicros(absl::Now()), "-",
                                      reinterpret_cast<uintptr_t>(request.get()) % 1000003);
  request->chat.set_request_id(id);

  // Counted in flight (metrics, drain) until the answer is sent.
  struct InFlight {
    services::RpcMetrics* metrics;
    std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
    std::string code = "OK";
    ~InFlight() {
      metrics->Record("http.chat.completions", code,
                      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
      metrics->in_flight()->Add(-1);
    }
  };
  metrics->in_flight()->Add(1);
  auto in_flight = std::make_shared<InFlight>(InFlight{metrics});
  auto ex = std::make_shared<Exchange>();
  const absl::Time deadline = absl::Now() + limits.default_deadline;
  const absl::Status queued = service_->queue()->Submit([this, ex, request, deadline] {
    CallState call;
    call.cancellation = ex.get();
    call.deadline = deadline;
    const absl::Status s =
        service_->Run(request->chat, request->video ? &*request->video : nullptr, request->video_settings, call,
                      [ex](v1::ChatResponse r) { return ex->Emit(std::move(r)); });
    ex->Done(s);
  });
  auto fail = [&](const absl::Status& s) {
    in_flight->code = absl::StatusCodeToString(s.code());
    SetError(res, s);
  };
  if (!queued.ok()) return fail(queued);

  const json model = options_.model_id;
  const int64_t created = absl::ToUnixSeconds(absl::Now());
  if (!request->stream) {
    std::deque<std::string> deltas;
    bool done = false;
    while (!done) ex->Next(&deltas, &done);
    if (const absl::Status s = ex->status(); !s.ok()) return fail(s);
    const v1::ChatFinal f = ex->final_message();
    json choice = {{"index", 0},
                   {"message", {{"role", "assistant"}, {"content", f.response()}}},
                   {"finish_reason", FinishReason(f.finish_reason())},
                   {"token_ids", TokenIds(f)}};
    res.set_content(Dump(json{{"id", id},
                              {"object", "chat.completion"},
                              {"created", created},
                              {"model", model},
                              {"choices", json::array({choice})},
                              {"usage", Usage(f)}}),
                    "application/json");
    return;
  }
  // Streamed: errors found before the first token still get their status.
  ex->WaitStarted();
  if (ex->done() && !ex->status().ok()) return fail(ex->status());
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider("text/event-stream", [ex, request, in_flight, id, created, model](
                                                            size_t, httplib::DataSink& sink) {
    auto send = [&](const json& j) {
      const std::string event = absl::StrCat("data: ", Dump(j), "\n\n");
      return sink.write(event.data(), event.size());
    };
    auto chunk = [&](json delta, json finish) {
      return json{{"id", id},
                  {"object", "chat.completion.chunk"},
                  {"created", created},
                  {"model", model},
                  {"choices", json::array({{{"index", 0}, {"delta", std::move(delta)}, {"finish_reason", finish}}})}};
    };
    auto gone = [&] {
      ex->Cancel();
      in_flight->code = "CANCELLED";
      return false;
    };
    if (!send(chunk({{"role", "assistant"}, {"content", ""}}, nullptr))) return gone();
    StrippedStream strip;
    for (bool done = false; !done;) {
      std::deque<std::string> deltas;
      ex->Next(&deltas, &done);
      for (const std::string& d : deltas) {
        const std::string text = strip.Put(d);
        if (!text.empty() && !send(chunk({{"content", text}}, nullptr))) return gone();
      }
    }
    if (const absl::Status s = ex->status(); !s.ok()) {
      in_flight->code = absl::StatusCodeToString(s.code());
      send(json::parse(ErrorBody(s)));
    } else {
      const v1::ChatFinal f = ex->final_message();
      json last = chunk(json::object(), FinishReason(f.finish_reason()));
      last["choices"][0]["token_ids"] = TokenIds(f);
      send(last);
      if (request->include_usage) {
        json usage = chunk(json::object(), nullptr);
        usage["choices"] = json::array();
        usage["usage"] = Usage(f);
        send(usage);
      }
    }
    static constexpr char kDone[] = "data: [DONE]\n\n";
    sink.write(kDone, sizeof(kDone) - 1);
    sink.done();
    return true;
  });
}

OpenAiServer::~OpenAiServer() { Stop(); }

void OpenAiServer::Stop() {
  if (server_ != nullptr) server_->stop();
  if (thread_.joinable()) thread_.join();
}

}  // namespace internvl::gateway
