// Text <-> token ids for the InternVL2 / InternVL2.5 language models, identical
// to the reference: HuggingFace transformers 4.47 SLOW tokenizers
// (Qwen2Tokenizer, LlamaTokenizer) and InternVL's remote-code
// InternLM2Tokenizer, as loaded by `AutoTokenizer.from_pretrained(dir,
// trust_remote_code=True, use_fast=False)` in the model cards.
//
// Kinds (chosen from the folder's tokenizer_config.json `tokenizer_class`;
// when absent, from the files present, never from the model's name):
//  * kQwen2Bpe   (InternVL2-1B, InternVL2_5-1B/4B): byte-level BPE from
//    vocab.json + merges.txt (or tokenizer.json), NFC first, Qwen2 regex
//    pre-tokenizer, no BOS.
//  * kInternLM2  (InternVL2-2B/8B/26B, InternVL2_5-2B/8B): sentencepiece
//    tokenizer.model with InternLM2Tokenizer's decode rules, BOS <s> added.
//  * kLlama      (InternVL2-40B, Yi): sentencepiece with LlamaTokenizer's
//    legacy=True rules (add_bos_token / add_prefix_space from the config).
//
// Shared by all kinds (PreTrainedTokenizer): added tokens (<|im_start|>,
// <img>, <IMG_CONTEXT>, ...) with the ids of added_tokens_decoder /
// added_tokens.json are split out of the text (leftmost, longest match)
// before the model tokenizer sees it, unless split_special_tokens is set.
//
// Thread safety: a loaded Tokenizer is immutable; all methods are const and
// may be called concurrently.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace internvl::tokenizer {

struct EncodeOptions {
  // tok(text)["input_ids"] (true) vs tok(text, add_special_tokens=False):
  // whether BOS/EOS are added as the tokenizer's config says (InternLM2: BOS;
  // Qwen2: nothing; Llama: add_bos_token / add_eos_token).
  bool add_special_tokens = true;
  // split_special_tokens=True: added and special tokens in the text are NOT
  // recognised; their text goes through the model tokenizer like any other.
  // Unset: the folder's tokenizer_config.json `split_special_tokens` (false
  // in every InternVL folder).
  std::optional<bool> split_special_tokens;
};

class Tokenizer {
 public:
  enum class Kind { kQwen2Bpe, kInternLM2, kLlama };

  // Loads the tokenizer of an HF model folder. Errors: NOT_FOUND naming the
  // folder and the files looked for when none of vocab.json+merges.txt,
  // tokenizer.json, tokenizer.model is there; INVALID_ARGUMENT for an
  // unsupported `tokenizer_class` or malformed files.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& dir);

  virtual ~Tokenizer() = default;

  virtual Kind kind() const = 0;

  // tok(text, add_special_tokens=..., split_special_tokens=...)["input_ids"].
  // `text` must be valid UTF-8: the reference takes a Python str, which cannot
  // hold ill-formed bytes, so ill-formed input is rejected with
  // INVALID_ARGUMENT naming the byte offset (callers holding raw bytes decide
  // how to repair them, e.g. with DecodeUtf8Replace from utf8.h).
  virtual absl::StatusOr<std::vector<int>> Encode(absl::string_view text,
                                                  const EncodeOptions& options = {}) const = 0;

  // tok.decode(ids, skip_special_tokens=...), including the reference's
  // per-kind quirks (InternLM2 puts spaces around special tokens, Llama joins
  // sub-texts with spaces and drops the first piece's leading "▁"). Ids
  // outside [0, size()) have no text and are skipped (the reference raises).
  virtual std::string Decode(absl::Span<const int> ids, bool skip_special_tokens = false) const = 0;

  // Whether Decode(ids, skip_special_tokens) would end in U+FFFD only because
  // the trailing byte tokens form a UTF-8 sequence that is not complete yet
  // (more byte tokens could complete it). Used by StreamingDetokenizer.
  virtual bool EndsWithIncompleteUtf8(absl::Span<const int> ids,
                                      bool skip_special_tokens) const = 0;

  // tok.convert_ids_to_tokens(id) ("Ġworld", "▁world", "<0x0A>", "<img>");
  // nullopt outside [0, size()).
  virtual std::optional<std::string> IdToToken(int id) const = 0;
  // tok.convert_tokens_to_ids(token), added tokens first; nullopt when the
  // token is in neither vocabulary (the reference returns unk / None).
  virtual std::optional<int> TokenToId(absl::string_view token) const = 0;

  // tok.vocab_size: the base model's vocabulary (151643 for Qwen2, the
  // sentencepiece piece count otherwise).
  virtual int vocab_size() const = 0;
  // len(tok): base vocabulary plus added tokens beyond it.
  virtual int size() const = 0;

  virtual std::optional<int> bos_token_id() const = 0;
  virtual std::optional<int> eos_token_id() const = 0;
  virtual std::optional<int> pad_token_id() const = 0;
  virtual std::optional<int> unk_token_id() const = 0;

  // Whether `id` is in tok.all_special_ids (bos/eos/unk/pad and
  // additional_special_tokens): those are what skip_special_tokens drops.
  virtual bool is_special(int id) const = 0;
};

const char* TokenizerKindName(Tokenizer::Kind kind);

}  // namespace internvl::tokenizer
