#include "core/train/data_preprocess.h"

#include <algorithm>
#include <optional>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "core/status.h"

namespace internvl::train {
namespace {

using tokenizer::ChatTemplate;
using tokenizer::Tokenizer;

// The literal message frames of preprocess_internvl2_5 (not taken from the
// template: the official function writes them out).
constexpr char kImStart[] = "<|im_start|>";
constexpr char kImEndNewline[] = "<|im_end|>\n";
constexpr char kAssistantHeader[] = "<|im_start|>assistant\n";
// preprocess_phi3 never supervises this token.
constexpr char kEndOfText[] = "<|endoftext|>";

// tokenizer(text).input_ids: the tokenizer's own special-token rule (BOS for
// InternLM2 / Llama, nothing for Qwen2), as every official call does.
absl::StatusOr<std::vector<int64_t>> Tokenize(const Tokenizer& tok, absl::string_view text) {
  INTERNVL_ASSIGN_OR_RETURN(std::vector<int> ids, tok.Encode(text));
  return std::vector<int64_t>(ids.begin(), ids.end());
}
absl::StatusOr<int64_t> TokenCount(const Tokenizer& tok, absl::string_view text) {
  INTERNVL_ASSIGN_OR_RETURN(std::vector<int> ids, tok.Encode(text));
  return static_cast<int64_t>(ids.size());
}

// target[start:stop] = IGNORE with Python slice semantics (negative bounds
// count from the end, everything clamped, an empty range does nothing).
void MaskSlice(std::vector<int64_t>* target, int64_t start, std::optional<int64_t> stop) {
  const int64_t n = static_cast<int64_t>(target->size());
  auto norm = [n](int64_t v) { return std::clamp<int64_t>(v < 0 ? v + n : v, 0, n); };
  const int64_t a = norm(start);
  const int64_t b = stop ? norm(*stop) : n;
  for (int64_t i = a; i < b; ++i) (*target)[i] = kIgnoreIndex;
}

std::string ImageTokens(int64_t num_context) {
  std::string out = tokenizer::kImgStartToken;
  const absl::string_view context = tokenizer::kImgContextToken;
  out.reserve(out.size() + context.size() * num_context + 8);
  for (int64_t i = 0; i < num_context; ++i) out.append(context.data(), context.size());
  out += tokenizer::kImgEndToken;
  return out;
}

// `roles = {'human': conv.roles[0], 'gpt': conv.roles[1]}` lookups.
std::optional<int> RoleIndex(const std::string& from) {
  if (from == "human") return 0;
  if (from == "gpt") return 1;
  return std::nullopt;
}

// The message selection of preprocess / preprocess_mpt / _internlm / _phi3:
// a first message not from the user is dropped, then roles must alternate
// user, assistant, ... A role other than human/gpt (e.g. "system") is the
// official KeyError.
absl::StatusOr<std::vector<Message>> SelectAlternatingMessages(const std::vector<Message>& messages,
                                                               PreprocessStyle style) {
  if (messages.empty()) return absl::InvalidArgumentError("`conversations` is empty");
  auto unknown = [&](const Message& m) {
    return absl::InvalidArgumentError(
        absl::StrCat("a \"", m.from, "\" turn is not supported by ", PreprocessStyleName(style),
                     " (only \"human\" / \"gpt\"; the official code raises KeyError('", m.from,
                     "') and silently replaces the record; a system prompt needs conv_style internvl2_5)"));
  };
  const std::optional<int> first = RoleIndex(messages[0].from);
  if (!first) return unknown(messages[0]);
  std::vector<Message> out;
  const size_t begin = *first != 0 ? 1 : 0;  // "Skip the first one if it is not from human"
  for (size_t i = begin; i < messages.size(); ++i) {
    const std::optional<int> role = RoleIndex(messages[i].from);
    if (!role) return unknown(messages[i]);
    const size_t j = i - begin;
    if (*role != static_cast<int>(j % 2)) {
      return absl::InvalidArgumentError(absl::StrCat("turn ", i, " is from \"", messages[i].from,
                                                     "\" but turns must alternate human, gpt, ... (",
                                                     PreprocessStyleName(style), " asserts this)"));
    }
    out.push_back(messages[i]);
  }
  return out;
}

// Conversation.get_prompt() for SeparatorStyle.MPT with the template's own
// system message (data cannot change it in these functions).
std::string RenderMpt(const ChatTemplate& t, const std::vector<Message>& messages) {
  std::string out = absl::StrReplaceAll(t.system_template, {{"{system_message}", t.system_message}});
  out += t.sep;
  for (const Message& m : messages) {
    const std::string& role = m.from == "human" ? t.user_role : t.assistant_role;
    if (m.value.empty()) {
      out += role;  // `if message:` else `ret += role`
    } else {
      absl::StrAppend(&out, role, m.value, t.sep);
    }
  }
  return out;
}

// `for i in range(num_image): conversation = conversation.replace('<image>', image_tokens_i, 1)`.
void ExpandImages(std::string* prompt, const PreprocessRequest& request) {
  if (request.text_only) return;
  for (int64_t n : request.num_image_tokens) ReplaceFirst(prompt, tokenizer::kImagePlaceholder, ImageTokens(n));
}

struct WholePrompt {
  std::vector<int64_t> input_ids;
  int64_t total_len = 0;  // target.ne(tokenizer.pad_token_id).sum()
};

// tokenizer(conversation, truncation=True, max_length=model_max_length). A
// prefix of the full ids: the InternVL tokenizers add at most a BOS, which
// HF's truncation keeps in front.
absl::StatusOr<WholePrompt> TokenizeWhole(const Tokenizer& tok, const std::string& prompt, int max_seq_length) {
  WholePrompt w;
  INTERNVL_ASSIGN_OR_RETURN(w.input_ids, Tokenize(tok, prompt));
  if (static_cast<int64_t>(w.input_ids.size()) > max_seq_length) w.input_ids.resize(max_seq_length);
  const std::optional<int> pad = tok.pad_token_id();
  w.total_len = pad ? std::count_if(w.input_ids.begin(), w.input_ids.end(), [&](int64_t id) { return id != *pad; })
                    : static_cast<int64_t>(w.input_ids.size());
  return w;
}

// The shared tail of the mismatch-checking functions.
void CheckMismatch(int64_t cur_len, const WholePrompt& w, int max_seq_length, std::optional<int64_t> num_turns,
                   TokenizedConversation* out) {
  if (cur_len < max_seq_length && cur_len != w.total_len) {
    std::fill(out->labels.begin(), out->labels.end(), kIgnoreIndex);
    out->fully_masked = true;
    out->warning = absl::StrCat("tokenization mismatch: ", cur_len, " vs. ", w.total_len, ".",
                                num_turns ? absl::StrCat(" #turn = ", *num_turns, ".") : std::string(),
                                " (ignored: every label of this sample is -100)");
  }
}

// turns = conversation.split(conv.sep); re_turns = [sep.join(turns[:3])] +
// [sep.join(turns[i:i + 2]) for i in range(3, len(turns), 2)].
std::vector<std::string> Regroup(const std::vector<std::string>& turns, const std::string& sep) {
  std::vector<std::string> re_turns;
  const size_t head = std::min<size_t>(3, turns.size());
  re_turns.push_back(absl::StrJoin(turns.begin(), turns.begin() + head, sep));
  for (size_t i = 3; i < turns.size(); i += 2) {
    re_turns.push_back(absl::StrJoin(turns.begin() + i, turns.begin() + std::min(i + 2, turns.size()), sep));
  }
  return re_turns;
}

absl::StatusOr<TokenizedConversation> PreprocessMpt(const ChatTemplate& t, const Tokenizer& tok,
                                                    const PreprocessRequest& request) {
  INTERNVL_ASSIGN_OR_RETURN(std::vector<Message> messages,
                            SelectAlternatingMessages(request.messages, PreprocessStyle::kMpt));
  std::string prompt = RenderMpt(t, messages);
  ExpandImages(&prompt, request);
  INTERNVL_ASSIGN_OR_RETURN(WholePrompt w, TokenizeWhole(tok, prompt, request.max_seq_length));
  TokenizedConversation out;
  out.input_ids = w.input_ids;
  out.labels = w.input_ids;

  const std::string sep = t.sep + t.assistant_role;  // <|im_end|><|im_start|>assistant\n
  const std::vector<std::string> turns = PySplit(prompt, t.sep);
  int64_t cur_len = 0;
  for (const std::string& turn : Regroup(turns, t.sep)) {
    if (turn.empty()) break;
    INTERNVL_ASSIGN_OR_RETURN(int64_t turn_len, TokenCount(tok, turn));
    turn_len += 1;  // the <|im_end|> the split removed
    std::vector<std::string> parts = PySplit(turn, sep);
    if (parts.size() != 2) break;
    INTERNVL_ASSIGN_OR_RETURN(const int64_t instruction_len, TokenCount(tok, parts[0] + sep));
    MaskSlice(&out.labels, cur_len, cur_len + instruction_len);
    cur_len += turn_len;
  }
  MaskSlice(&out.labels, cur_len, std::nullopt);
  CheckMismatch(cur_len, w, request.max_seq_length, static_cast<int64_t>(turns.size()) - 1, &out);
  return out;
}

absl::StatusOr<TokenizedConversation> PreprocessPhi3(const ChatTemplate& t, const Tokenizer& tok,
                                                     const PreprocessRequest& request) {
  INTERNVL_ASSIGN_OR_RETURN(std::vector<Message> messages,
                            SelectAlternatingMessages(request.messages, PreprocessStyle::kPhi3));
  std::string prompt = RenderMpt(t, messages);
  ExpandImages(&prompt, request);
  INTERNVL_ASSIGN_OR_RETURN(WholePrompt w, TokenizeWhole(tok, prompt, request.max_seq_length));
  TokenizedConversation out;
  out.input_ids = w.input_ids;
  out.labels = w.input_ids;

  const std::string sep = t.sep + t.assistant_role;  // <|end|><|assistant|>\n
  const std::vector<std::string> turns = PySplit(prompt, t.sep);
  int64_t cur_len = 1;
  MaskSlice(&out.labels, 0, cur_len);
  // convert_tokens_to_ids('<|endoftext|>'): the unk id when not a token.
  std::optional<int> endoftext = tok.TokenToId(kEndOfText);
  if (!endoftext) endoftext = tok.unk_token_id();
  if (endoftext) {
    for (int64_t& label : out.labels) {
      if (label == *endoftext) label = kIgnoreIndex;
    }
  }
  const std::vector<std::string> re_turns = Regroup(turns, t.sep);
  for (size_t i = 0; i < re_turns.size(); ++i) {
    const std::string& turn = re_turns[i];
    if (turn.empty()) break;
    INTERNVL_ASSIGN_OR_RETURN(int64_t turn_len, TokenCount(tok, turn));
    if (i != 0) turn_len -= 1;
    std::vector<std::string> parts = PySplit(turn, sep);
    if (parts.size() != 2) break;
    INTERNVL_ASSIGN_OR_RETURN(int64_t instruction_len, TokenCount(tok, parts[0] + sep));
    instruction_len -= i == 0 ? 1 : 2;
    MaskSlice(&out.labels, cur_len, cur_len + instruction_len);
    cur_len += turn_len;
  }
  MaskSlice(&out.labels, cur_len, std::nullopt);
  CheckMismatch(cur_len, w, request.max_seq_length, static_cast<int64_t>(turns.size()) - 1, &out);
  return out;
}

absl::StatusOr<TokenizedConversation> PreprocessInternLM(const ChatTemplate& t, const Tokenizer& tok,
                                                         const PreprocessRequest& request) {
  INTERNVL_ASSIGN_OR_RETURN(std::vector<Message> messages,
                            SelectAlternatingMessages(request.messages, PreprocessStyle::kInternLM));
  for (Message& m : messages) m.value = PyStrip(m.value);
  std::string prompt = RenderMpt(t, messages);
  ExpandImages(&prompt, request);
  INTERNVL_ASSIGN_OR_RETURN(WholePrompt w, TokenizeWhole(tok, prompt, request.max_seq_length));
  TokenizedConversation out;
  out.input_ids = w.input_ids;
  out.labels = w.input_ids;

  // Every `len(tokenizer(x).input_ids) - 1` drops the BOS the tokenizer adds.
  auto len_minus_bos = [&](absl::string_view text) -> absl::StatusOr<int64_t> {
    INTERNVL_ASSIGN_OR_RETURN(const int64_t n, TokenCount(tok, text));
    return n - 1;
  };
  int64_t cur_len = 1;
  MaskSlice(&out.labels, 0, cur_len);  // <s>
  const std::vector<std::string> parts = PySplit(prompt, t.assistant_role);
  INTERNVL_ASSIGN_OR_RETURN(int64_t temp_len, len_minus_bos(parts[0] + t.assistant_role));
  MaskSlice(&out.labels, cur_len, cur_len + temp_len);
  cur_len += temp_len;
  for (size_t index = 1; index + 1 < parts.size(); ++index) {
    const std::vector<std::string> halves = PySplit(parts[index], t.user_role);
    if (halves.size() != 2) {
      // `part1, part2 = info.split(conv.roles[0])` raises ValueError.
      return absl::InvalidArgumentError(absl::StrCat("assistant part ", index, " of the prompt holds ",
                                                     halves.size() - 1, " user turns instead of 1 (",
                                                     "a message contains \"", t.user_role, "\" or \"", t.assistant_role,
                                                     "\"; preprocess_internlm raises ValueError)"));
    }
    INTERNVL_ASSIGN_OR_RETURN(temp_len, len_minus_bos(halves[0]));
    cur_len += temp_len;
    INTERNVL_ASSIGN_OR_RETURN(temp_len, len_minus_bos(t.user_role + halves[1] + t.assistant_role));
    MaskSlice(&out.labels, cur_len, cur_len + temp_len);
    cur_len += temp_len;
  }
  INTERNVL_ASSIGN_OR_RETURN(temp_len, len_minus_bos(parts.back()));
  cur_len += temp_len;
  MaskSlice(&out.labels, cur_len, std::nullopt);
  CheckMismatch(cur_len, w, request.max_seq_length, std::nullopt, &out);
  return out;
}

absl::StatusOr<TokenizedConversation> PreprocessInternVL25(const ChatTemplate& t, const Tokenizer& tok,
                                                           const PreprocessRequest& request) {
  if (request.messages.empty()) return absl::InvalidArgumentError("`conversations` is empty");
  std::vector<Message> messages = request.messages;
  std::string system_prompt = t.system_message;
  if (messages[0].from == "system") {
    system_prompt = messages[0].value;
    messages.erase(messages.begin());
  }
  if (!request.text_only) {
    const size_t num_image = request.num_image_tokens.size();
    size_t current = 0;
    for (Message& m : messages) {
      if (m.from != "human") continue;
      const size_t count = [&] {
        size_t c = 0;
        for (size_t p = m.value.find(tokenizer::kImagePlaceholder); p != std::string::npos;
             p = m.value.find(tokenizer::kImagePlaceholder, p + 1)) {
          ++c;
        }
        return c;
      }();
      for (size_t i = 0; i < count && current < num_image; ++i) {
        ReplaceFirst(&m.value, tokenizer::kImagePlaceholder, ImageTokens(request.num_image_tokens[current]));
        ++current;
      }
    }
    if (current != num_image) {
      return absl::InvalidArgumentError(
          absl::StrCat("the human turns hold ", current, " \"<image>\" placeholders for ", num_image,
                       " images (preprocess_internvl2_5 asserts they match; a leading system turn hides the automatic "
                       "\"<image>\\n\" of single-image records)"));
    }
  }

  enum class Role { kSystem, kHuman, kGpt };
  std::vector<std::string> batches;
  std::vector<Role> roles;
  batches.push_back(absl::StrCat(kImStart, "system\n", system_prompt, kImEndNewline));
  roles.push_back(Role::kSystem);
  for (const Message& m : messages) {
    if (m.from == "human") {
      batches.push_back(absl::StrCat(kImStart, "user\n", m.value, kImEndNewline));
      roles.push_back(Role::kHuman);
    } else if (m.from == "gpt") {
      batches.push_back(absl::StrCat(kImStart, "assistant\n", m.value, kImEndNewline));
      roles.push_back(Role::kGpt);
    } else {
      return absl::InvalidArgumentError(absl::StrCat("a \"", m.from, "\" turn is not supported by ",
                                                     "preprocess_internvl2_5 (only a leading \"system\", then "
                                                     "\"human\" / \"gpt\"; the official code raises "
                                                     "NotImplementedError)"));
    }
  }

  // getattr(tokenizer, 'add_bos_token', False): true exactly for the
  // tokenizers that put a BOS in front of every encode (InternLM2, Llama).
  INTERNVL_ASSIGN_OR_RETURN(const std::vector<int64_t> empty_ids, Tokenize(tok, ""));
  const std::optional<int> bos = tok.bos_token_id();
  const bool add_bos = bos && !empty_ids.empty() && empty_ids.front() == *bos;
  if (add_bos) {
    const std::optional<std::string> bos_text = tok.IdToToken(*bos);
    if (!bos_text) return absl::InternalError("the tokenizer's BOS id has no token");
    batches[0] = *bos_text + batches[0];
  }

  TokenizedConversation out;
  INTERNVL_ASSIGN_OR_RETURN(const int64_t header_len, TokenCount(tok, kAssistantHeader));
  const int64_t ignore_len = add_bos ? header_len - 1 : header_len;
  for (size_t k = 0; k < batches.size(); ++k) {
    INTERNVL_ASSIGN_OR_RETURN(std::vector<int64_t> ids, Tokenize(tok, batches[k]));
    if (add_bos && !ids.empty()) ids.erase(ids.begin());  // item[1:]
    std::vector<int64_t> target(ids.size(), kIgnoreIndex);
    if (roles[k] == Role::kGpt) {
      target = ids;
      MaskSlice(&target, 0, ignore_len);     // `<|im_start|>assistant\n`
      MaskSlice(&target, -1, std::nullopt);  // the trailing `\n`
    }
    out.input_ids.insert(out.input_ids.end(), ids.begin(), ids.end());
    out.labels.insert(out.labels.end(), target.begin(), target.end());
  }
  if (static_cast<int64_t>(out.input_ids.size()) > request.max_seq_length) {
    out.input_ids.resize(request.max_seq_length);
    out.labels.resize(request.max_seq_length);
  }
  return out;
}

// Code points for which Python's str.isspace() is true.
bool IsPySpace(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

// Decodes the UTF-8 sequence starting at s[i] (length in *len); invalid
// bytes decode as themselves with length 1 (never whitespace).
uint32_t DecodeAt(absl::string_view s, size_t i, size_t* len) {
  const auto b = [&](size_t k) { return static_cast<uint8_t>(s[k]); };
  const uint8_t c = b(i);
  int n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
  if (n == 0 || i + n > s.size()) {
    *len = 1;
    return 0xFFFFFFFF;
  }
  uint32_t cp = n == 1 ? c : n == 2 ? (c & 0x1F) : n == 3 ? (c & 0x0F) : (c & 0x07);
  for (int k = 1; k < n; ++k) {
    if ((b(i + k) & 0xC0) != 0x80) {
      *len = 1;
      return 0xFFFFFFFF;
    }
    cp = (cp << 6) | (b(i + k) & 0x3F);
  }
  *len = n;
  return cp;
}

}  // namespace

absl::StatusOr<PreprocessStyle> PreprocessStyleFor(absl::string_view conv_style) {
  if (conv_style == "Hermes-2") return PreprocessStyle::kMpt;
  if (conv_style == "internlm2-chat") return PreprocessStyle::kInternLM;
  if (conv_style == "phi3-chat") return PreprocessStyle::kPhi3;
  if (conv_style == "internvl2_5") return PreprocessStyle::kInternVL25;
  return absl::InvalidArgumentError(
      absl::StrCat("conv_style \"", conv_style,
                   "\" is not supported for training (supported: Hermes-2, internlm2-chat, internvl2_5, phi3-chat)"));
}

const char* PreprocessStyleName(PreprocessStyle style) {
  switch (style) {
    case PreprocessStyle::kMpt:
      return "preprocess_mpt";
    case PreprocessStyle::kInternLM:
      return "preprocess_internlm";
    case PreprocessStyle::kPhi3:
      return "preprocess_phi3";
    case PreprocessStyle::kInternVL25:
      return "preprocess_internvl2_5";
  }
  return "preprocess";
}

absl::StatusOr<TokenizedConversation> PreprocessConversation(PreprocessStyle style, const ChatTemplate& chat_template,
                                                             const Tokenizer& tokenizer,
                                                             const PreprocessRequest& request) {
  if (request.max_seq_length <= 0) return absl::InvalidArgumentError("max_seq_length must be positive");
  switch (style) {
    case PreprocessStyle::kMpt:
      return PreprocessMpt(chat_template, tokenizer, request);
    case PreprocessStyle::kInternLM:
      return PreprocessInternLM(chat_template, tokenizer, request);
    case PreprocessStyle::kPhi3:
      return PreprocessPhi3(chat_template, tokenizer, request);
    case PreprocessStyle::kInternVL25:
      return PreprocessInternVL25(chat_template, tokenizer, request);
  }
  return absl::InternalError("unknown preprocess style");
}

std::vector<std::string> PySplit(absl::string_view s, absl::string_view sep) {
  std::vector<std::string> out;
  if (sep.empty()) {
    out.emplace_back(s);
    return out;
  }
  size_t pos = 0;
  for (size_t found = s.find(sep); found != absl::string_view::npos; found = s.find(sep, pos)) {
    out.emplace_back(s.substr(pos, found - pos));
    pos = found + sep.size();
  }
  out.emplace_back(s.substr(pos));
  return out;
}

std::string PyStrip(absl::string_view s) {
  size_t begin = 0;
  while (begin < s.size()) {
    size_t len = 0;
    if (!IsPySpace(DecodeAt(s, begin, &len))) break;
    begin += len;
  }
  size_t end = s.size();
  while (end > begin) {
    // Step back to the start of the last code point.
    size_t start = end - 1;
    while (start > begin && (static_cast<uint8_t>(s[start]) & 0xC0) == 0x80 && end - start < 4) --start;
    size_t len = 0;
    const uint32_t cp = DecodeAt(s, start, &len);
    if (start + len != end || !IsPySpace(cp)) break;
    end = start;
  }
  return std::string(s.substr(begin, end - begin));
}

bool ReplaceFirst(std::string* s, absl::string_view from, absl::string_view to) {
  const size_t at = s->find(from.data(), 0, from.size());
  if (at == std::string::npos) return false;
  s->replace(at, from.size(), to.data(), to.size());
  return true;
}

}  // namespace internvl::train
