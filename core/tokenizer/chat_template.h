// InternVL chat templates and the prompt rules of InternVLChatModel.chat() /
// batch_chat() (github OpenGVLab/InternVL @2410d1d, internvl_chat/internvl/
// conversation.py and modeling_internvl_chat.py).
//
// All four templates use conversation.py's SeparatorStyle.MPT:
//   system_template.format(system_message) + sep,
//   then role + message + sep for every message with text,
//   and the bare assistant role last (the model continues from there).
// Hermes-2 / internlm2-chat: "<|im_start|>system\n{sys}<|im_end|><|im_start|>user\n
// {q}<|im_end|><|im_start|>assistant\n"; internvl2_5 uses "<|im_end|>\n" as sep;
// phi3-chat: "<|system|>\n{sys}<|end|><|user|>\n{q}<|end|><|assistant|>\n".
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "core/config.h"
#include "core/tokenizer/tokenizer.h"

namespace internvl::tokenizer {

// Placeholder and image tokens (modeling_internvl_chat.py constants).
inline constexpr char kImagePlaceholder[] = "<image>";
inline constexpr char kImgStartToken[] = "<img>";
inline constexpr char kImgEndToken[] = "</img>";
inline constexpr char kImgContextToken[] = "<IMG_CONTEXT>";

struct ChatTemplate {
  std::string name;
  std::string system_template;  // contains "{system_message}"
  std::string system_message;   // the template's default
  std::string user_role;        // roles[0]
  std::string assistant_role;   // roles[1]
  std::string sep;
};

// The registered templates: "Hermes-2", "internlm2-chat", "internvl2_5",
// "phi3-chat". Unknown names are INVALID_ARGUMENT listing the known ones.
absl::StatusOr<const ChatTemplate*> GetTemplate(absl::string_view name);
std::vector<std::string> TemplateNames();

// One earlier exchange: (question, answer), as chat()'s `history`.
using ChatHistory = std::vector<std::pair<std::string, std::string>>;

// The system message chat() uses: the model config's `system_message` when
// present, else the template's default.
std::string SystemMessageFor(const ChatTemplate& chat_template,
                             const std::optional<std::string>& config_system_message);

// Conversation.get_prompt() after appending the history, the question and an
// empty assistant turn. As in the reference, a history message that is empty
// renders as its bare role (no text, no separator).
std::string RenderPrompt(const ChatTemplate& chat_template, absl::string_view system_message,
                         const ChatHistory& history, absl::string_view question);

// chat()'s question rule: with images and no history given (history=None)
// and no "<image>" in the question, "<image>\n" is prepended. batch_chat()
// applies it to every question regardless of history (history_given=false).
std::string BuildChatQuestion(absl::string_view question, bool has_images, bool history_given);

// The video question of the model card / PaddleMIX chat_demo_video.py:
// "Frame1: <image>\nFrame2: <image>\n..." + question.
std::string BuildVideoQuestion(int num_frames, absl::string_view question);

// chat()'s expansion: for each image in order, the FIRST remaining "<image>"
// of the whole prompt becomes "<img>" + "<IMG_CONTEXT>" x (num_image_token x
// num_patches) + "</img>". A prompt with fewer placeholders than images is
// INVALID_ARGUMENT (the reference would fail later on a count mismatch);
// placeholders beyond the images stay as text, as in the reference.
absl::StatusOr<std::string> ExpandImageTokens(absl::string_view prompt,
                                              absl::Span<const int> num_patches_per_image,
                                              int num_image_token);

// The ids generation stops on: the template separator's token
// (convert_tokens_to_ids(sep.strip()), what chat() passes as eos_token_id),
// then generation_config.json's eos ids, without duplicates. Errors if the
// separator is not a token of `tokenizer`.
absl::StatusOr<std::vector<int>> StopTokenIds(const ChatTemplate& chat_template,
                                              const Tokenizer& tokenizer,
                                              const GenerationConfig& generation_config);

// chat()'s answer post-processing on the decoded text (skip_special_tokens):
// the part before the first sep.strip(), with surrounding whitespace removed.
std::string ExtractResponse(const ChatTemplate& chat_template, absl::string_view decoded);

}  // namespace internvl::tokenizer
