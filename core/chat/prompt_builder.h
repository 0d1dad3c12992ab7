// The text side of chat(), torch-free: the model's tokenizer, chat template,
// system message, stop ids and <IMG_CONTEXT> id, and the question / prompt
// rules. Shared by the in-process ChatPipeline, the gateway (which renders
// and tokenises prompts for the remote decoder) and the decoder service
// (stop ids, <IMG_CONTEXT> id, detokenisation), so every path builds exactly
// the same prompt ids.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/chat/chat_types.h"
#include "core/config.h"
#include "core/tokenizer/chat_template.h"
#include "core/tokenizer/tokenizer.h"

namespace internvl {

class PromptBuilder {
 public:
  // `model_dir` is a resolved model folder (config.json + tokenizer files;
  // no weights are read).
  static absl::StatusOr<std::unique_ptr<PromptBuilder>> Load(const std::string& model_dir);

  const InternVLConfig& config() const { return config_; }
  const tokenizer::Tokenizer& tokenizer() const { return *tok_; }
  const tokenizer::ChatTemplate& chat_template() const { return *chat_template_; }
  const std::string& system_message() const { return system_message_; }
  // Template separator token + generation_config eos ids (chat()'s stops).
  const std::vector<int64_t>& stop_ids() const { return stop_ids_; }
  int64_t img_context_id() const { return img_context_id_; }

  // The question chat() sends for `request` with `num_media` images (or
  // video frames): the video "FrameN:" prefix, the multi-image "Image-N:"
  // prefix, or chat()'s "<image>\n" rule. `batch`: batch_chat()'s rule.
  absl::StatusOr<std::string> Question(const ChatRequest& request, size_t num_media, bool batch = false) const;
  // The rendered, image-expanded prompt chat() tokenizes.
  absl::StatusOr<std::string> BuildQuery(const ChatRequest& request, const std::vector<int>& num_patches_list) const;
  // BuildQuery + Encode: the prompt ids.
  absl::StatusOr<std::vector<int>> PromptIds(const ChatRequest& request,
                                             const std::vector<int>& num_patches_list) const;
  // chat()'s answer: decode (skip special tokens), cut at the separator, strip.
  std::string Response(const std::vector<int>& token_ids) const;
  // The same from text already decoded (e.g. cut at a stop string).
  std::string ResponseText(absl::string_view decoded) const;

 private:
  PromptBuilder() = default;
  InternVLConfig config_;
  std::unique_ptr<tokenizer::Tokenizer> tok_;
  const tokenizer::ChatTemplate* chat_template_ = nullptr;
  std::string system_message_;
  std::vector<int64_t> stop_ids_;
  int64_t img_context_id_ = -1;
};

}  // namespace internvl
