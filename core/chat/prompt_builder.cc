#include "core/chat/prompt_builder.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/status.h"

namespace internvl {

absl::StatusOr<std::unique_ptr<PromptBuilder>> PromptBuilder::Load(const std::string& model_dir) {
  std::unique_ptr<PromptBuilder> b(new PromptBuilder());
  INTERNVL_ASSIGN_OR_RETURN(b->config_, LoadInternVLConfig(model_dir));
  INTERNVL_ASSIGN_OR_RETURN(b->tok_, tokenizer::Tokenizer::Load(model_dir));
  if (b->config_.template_name.empty())
    return absl::InvalidArgumentError(absl::StrCat(model_dir, "/config.json names no chat template"));
  INTERNVL_ASSIGN_OR_RETURN(b->chat_template_, tokenizer::GetTemplate(b->config_.template_name));
  b->system_message_ = tokenizer::SystemMessageFor(*b->chat_template_, b->config_.system_message);
  INTERNVL_ASSIGN_OR_RETURN(GenerationConfig gen_config, LoadGenerationConfig(model_dir));
  INTERNVL_ASSIGN_OR_RETURN(std::vector<int> stops, tokenizer::StopTokenIds(*b->chat_template_, *b->tok_, gen_config));
  b->stop_ids_.assign(stops.begin(), stops.end());
  auto ctx = b->tok_->TokenToId(tokenizer::kImgContextToken);
  if (!ctx)
    return absl::InvalidArgumentError(absl::StrCat("the tokenizer in ", model_dir, " has no <IMG_CONTEXT> token"));
  b->img_context_id_ = *ctx;
  return b;
}

absl::StatusOr<std::string> PromptBuilder::Question(const ChatRequest& request, size_t num_media, bool batch) const {
  const bool has_images = num_media > 0;
  if (request.video) return tokenizer::BuildVideoQuestion(static_cast<int>(num_media), request.question);
  if (batch) {
    // batch_chat prepends "<image>\n" whenever pixel_values is given.
    if (has_images && !absl::StrContains(request.question, tokenizer::kImagePlaceholder))
      return absl::StrCat(tokenizer::kImagePlaceholder, "\n", request.question);
    return request.question;
  }
  if (num_media > 1 && !request.history_given && !absl::StrContains(request.question, tokenizer::kImagePlaceholder)) {
    // The model card's multi-image convention.
    std::string q;
    for (size_t i = 0; i < num_media; ++i)
      absl::StrAppend(&q, "Image-", i + 1, ": ", tokenizer::kImagePlaceholder, "\n");
    return absl::StrCat(q, request.question);
  }
  return tokenizer::BuildChatQuestion(request.question, has_images, request.history_given);
}

absl::StatusOr<std::string> PromptBuilder::BuildQuery(const ChatRequest& request,
                                                      const std::vector<int>& num_patches_list) const {
  INTERNVL_ASSIGN_OR_RETURN(std::string question, Question(request, num_patches_list.size()));
  std::string prompt = tokenizer::RenderPrompt(*chat_template_, request.system_message.value_or(system_message_),
                                               request.history, question);
  return tokenizer::ExpandImageTokens(prompt, num_patches_list, config_.num_image_token());
}

absl::StatusOr<std::vector<int>> PromptBuilder::PromptIds(const ChatRequest& request,
                                                          const std::vector<int>& num_patches_list) const {
  INTERNVL_ASSIGN_OR_RETURN(std::string query, BuildQuery(request, num_patches_list));
  return tok_->Encode(query);
}

std::string PromptBuilder::Response(const std::vector<int>& token_ids) const {
  return ResponseText(tok_->Decode(token_ids, /*skip_special_tokens=*/true));
}

std::string PromptBuilder::ResponseText(absl::string_view decoded) const {
  return tokenizer::ExtractResponse(*chat_template_, decoded);
}

}  // namespace internvl
