#include "core/tokenizer/chat_template.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/strip.h"

namespace internvl::tokenizer {
namespace {

// conversation.py @2410d1d. InternVL2 keeps the older system prompt in every
// template but internvl2_5 ("to avoid changes in benchmark performance").
constexpr char kInternVL2System[] =
    "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, "
    "是一个有用无害的人工智能助手。";
constexpr char kInternVL25System[] =
    "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。";

const std::vector<ChatTemplate>& Templates() {
  static const auto* templates = new std::vector<ChatTemplate>{
      {"Hermes-2", "<|im_start|>system\n{system_message}", kInternVL2System, "<|im_start|>user\n",
       "<|im_start|>assistant\n", "<|im_end|>"},
      {"internlm2-chat", "<|im_start|>system\n{system_message}", kInternVL2System,
       "<|im_start|>user\n", "<|im_start|>assistant\n", "<|im_end|>"},
      {"phi3-chat", "<|system|>\n{system_message}", kInternVL2System, "<|user|>\n",
       "<|assistant|>\n", "<|end|>"},
      {"internvl2_5", "<|im_start|>system\n{system_message}", kInternVL25System,
       "<|im_start|>user\n", "<|im_start|>assistant\n", "<|im_end|>\n"},
  };
  return *templates;
}

// Python's str.strip() for the whitespace that can occur around separators.
absl::string_view StripWhitespace(absl::string_view s) { return absl::StripAsciiWhitespace(s); }

}  // namespace

absl::StatusOr<const ChatTemplate*> GetTemplate(absl::string_view name) {
  for (const ChatTemplate& t : Templates()) {
    if (t.name == name) return &t;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown chat template \"", name,
                                                 "\" (known: ", absl::StrJoin(TemplateNames(), ", "), ")"));
}

std::vector<std::string> TemplateNames() {
  std::vector<std::string> names;
  for (const ChatTemplate& t : Templates()) names.push_back(t.name);
  return names;
}

std::string SystemMessageFor(const ChatTemplate& chat_template,
                             const std::optional<std::string>& config_system_message) {
  return config_system_message.value_or(chat_template.system_message);
}

std::string RenderPrompt(const ChatTemplate& t, absl::string_view system_message,
                         const ChatHistory& history, absl::string_view question) {
  std::string out = absl::StrReplaceAll(t.system_template, {{"{system_message}", system_message}});
  out += t.sep;
  const auto append = [&](const std::string& role, absl::string_view message) {
    if (message.empty()) {
      absl::StrAppend(&out, role);
    } else {
      absl::StrAppend(&out, role, message, t.sep);
    }
  };
  for (const auto& [q, a] : history) {
    append(t.user_role, q);
    append(t.assistant_role, a);
  }
  append(t.user_role, question);
  out += t.assistant_role;
  return out;
}

std::string BuildChatQuestion(absl::string_view question, bool has_images, bool history_given) {
  if (has_images && !history_given && !absl::StrContains(question, kImagePlaceholder)) {
    return absl::StrCat(kImagePlaceholder, "\n", question);
  }
  return std::string(question);
}

std::string BuildVideoQuestion(int num_frames, absl::string_view question) {
  std::string out;
  for (int i = 1; i <= num_frames; ++i) absl::StrAppend(&out, "Frame", i, ": ", kImagePlaceholder, "\n");
  absl::StrAppend(&out, question);
  return out;
}

absl::StatusOr<std::string> ExpandImageTokens(absl::string_view prompt,
                                              absl::Span<const int> num_patches_per_image,
                                              int num_image_token) {
  if (num_image_token <= 0) return absl::InvalidArgumentError("num_image_token must be positive");
  std::string out;
  size_t pos = 0;
  const absl::string_view placeholder = kImagePlaceholder;
  for (size_t i = 0; i < num_patches_per_image.size(); ++i) {
    const int patches = num_patches_per_image[i];
    if (patches <= 0) {
      return absl::InvalidArgumentError(absl::StrCat("image ", i + 1, " has ", patches, " patches"));
    }
    const size_t found = prompt.find(placeholder, pos);
    if (found == absl::string_view::npos) {
      return absl::InvalidArgumentError(absl::StrCat("the prompt has ", i, " \"<image>\" placeholders for ",
                                                     num_patches_per_image.size(), " images"));
    }
    absl::StrAppend(&out, prompt.substr(pos, found - pos), kImgStartToken);
    const size_t count = static_cast<size_t>(num_image_token) * patches;
    out.reserve(out.size() + count * (sizeof(kImgContextToken) - 1) + prompt.size());
    for (size_t k = 0; k < count; ++k) out += kImgContextToken;
    out += kImgEndToken;
    pos = found + placeholder.size();
  }
  absl::StrAppend(&out, prompt.substr(pos));
  return out;
}

absl::StatusOr<std::vector<int>> StopTokenIds(const ChatTemplate& chat_template,
                                              const Tokenizer& tokenizer,
                                              const GenerationConfig& generation_config) {
  const absl::string_view stop = StripWhitespace(chat_template.sep);
  const std::optional<int> sep_id = tokenizer.TokenToId(stop);
  if (!sep_id) {
    return absl::InvalidArgumentError(absl::StrCat("template ", chat_template.name, ": separator \"", stop,
                                                   "\" is not a token of this tokenizer"));
  }
  std::vector<int> ids = {*sep_id};
  for (int id : generation_config.eos_token_ids) {
    if (std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
  }
  return ids;
}

std::string ExtractResponse(const ChatTemplate& chat_template, absl::string_view decoded) {
  const absl::string_view stop = StripWhitespace(chat_template.sep);
  const size_t at = decoded.find(stop);
  return std::string(StripWhitespace(decoded.substr(0, at)));
}

}  // namespace internvl::tokenizer
