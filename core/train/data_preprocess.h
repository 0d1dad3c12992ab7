// The official per-template conversation -> (input_ids, labels) functions of
// InternVL's training code (internvl_chat/internvl/train/dataset.py @2410d1d:
// preprocess_mpt, preprocess_internlm, preprocess_phi3,
// preprocess_internvl2_5), reproduced step by step, quirks included, so that
// labels match the reference token for token. Torch-free.
//
// What each does (see ../shared/fixtures/training/README.md):
//  * preprocess_mpt (Hermes-2): MPT prompt, tokenized whole; labels found by
//    re-tokenizing "turns" split on the separator (system+user+gpt, then
//    user+gpt pairs); assistant answers and their <|im_end|> are labels.
//  * preprocess_internlm (internlm2-chat): every value .strip()ped; labels
//    found by splitting on the assistant role; BOS is -100.
//  * preprocess_phi3 (phi3-chat): as mpt with Llama-style BOS offsets, and
//    <|endoftext|> never a label.
//  * preprocess_internvl2_5 (internvl2_5): each message
//    "<|im_start|>{role}\n{text}<|im_end|>\n" tokenized SEPARATELY and the ids
//    concatenated; a leading "system" message replaces the system prompt;
//    `<|im_start|>assistant\n` and the trailing "\n" of each answer are -100.
// The first three compare the per-turn token count with the whole prompt's:
// on a mismatch the WHOLE sample's labels become -100 (fully_masked), as the
// official code does (it prints a warning and keeps the sample).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/tokenizer/chat_template.h"
#include "core/tokenizer/tokenizer.h"

namespace internvl::train {

// Label value of positions that are not supervised (IGNORE_TOKEN_ID).
inline constexpr int64_t kIgnoreIndex = -100;
// The video placeholder of the official data format.
inline constexpr char kVideoPlaceholder[] = "<video>";

enum class PreprocessStyle { kMpt, kInternLM, kPhi3, kInternVL25 };

// LazySupervisedDataset.get_preprocess_function: Hermes-2 -> mpt,
// internlm2-chat -> internlm, phi3-chat -> phi3, internvl2_5 -> internvl2_5.
// Any other name (the official generic `preprocess`, used by templates this
// project does not ship) is INVALID_ARGUMENT listing the supported ones.
absl::StatusOr<PreprocessStyle> PreprocessStyleFor(absl::string_view conv_style);
// "preprocess_mpt", ... (for messages).
const char* PreprocessStyleName(PreprocessStyle style);

// One entry of a record's `conversations`.
struct Message {
  std::string from;  // "human", "gpt" or "system"
  std::string value;
};

struct PreprocessRequest {
  std::vector<Message> messages;
  // <IMG_CONTEXT> count of each image in placeholder order (num_image_token
  // x tiles of that image). Its size is the official `num_image`.
  std::vector<int64_t> num_image_tokens;
  // pure_text_get_item: no <image> replacement (placeholders stay as text).
  bool text_only = false;
  int max_seq_length = 4096;  // tokenizer.model_max_length: truncation
};

struct TokenizedConversation {
  std::vector<int64_t> input_ids;
  std::vector<int64_t> labels;  // kIgnoreIndex where not supervised; not shifted
  bool fully_masked = false;    // tokenization mismatch: every label is kIgnoreIndex
  std::string warning;          // the official "tokenization mismatch: a vs. b" text
};

// Runs the official preprocess function of `style`. Errors (INVALID_ARGUMENT)
// where the official code raises: a "system" (or unknown) turn under
// mpt/internlm/phi3 (KeyError), turns not alternating human/gpt (assert), an
// internvl2_5 record with fewer <image> placeholders in human turns than
// images (assert) or an unknown role (NotImplementedError), an internlm
// prompt whose assistant part does not split into exactly one user turn
// (ValueError), and text that is not valid UTF-8.
absl::StatusOr<TokenizedConversation> PreprocessConversation(PreprocessStyle style,
                                                             const tokenizer::ChatTemplate& chat_template,
                                                             const tokenizer::Tokenizer& tokenizer,
                                                             const PreprocessRequest& request);

// Python str helpers the official code relies on (exposed for tests).
// str.split(sep) with a non-empty separator.
std::vector<std::string> PySplit(absl::string_view s, absl::string_view sep);
// str.strip() without arguments: strips the code points str.isspace() accepts.
std::string PyStrip(absl::string_view s);
// s.replace(from, to, 1); false when `from` does not occur.
bool ReplaceFirst(std::string* s, absl::string_view from, absl::string_view to);

}  // namespace internvl::train
