// Internal: the part of transformers' PreTrainedTokenizer (4.47, slow) that
// every kind shares: reading tokenizer_config.json / added_tokens.json /
// special_tokens_map.json, the added-token table and its text splitting,
// all_special_tokens, and the `_decode` loop that joins sub-texts. Kinds
// implement the model-specific hooks (`_tokenize`, `convert_tokens_to_string`,
// `build_inputs_with_special_tokens`).
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/tokenizer/tokenizer.h"

namespace internvl::tokenizer {

// Largest token id a tokenizer folder may use (vocab.json, added tokens).
// Tables are indexed by id, so an id is what they cost: real vocabularies
// stay under 2^18 (Qwen2: 151,646 with added tokens); a larger id is a
// corrupt or hostile file, refused before anything is sized by it.
inline constexpr int kMaxTokenId = (1 << 22) - 1;

// tokenizers.AddedToken as serialised in added_tokens_decoder.
struct AddedToken {
  std::string content;
  bool special = false;
  bool lstrip = false;  // strip whitespace on the left neighbour text
  bool rstrip = false;  // strip whitespace on the right neighbour text
};

// What the three JSON files say, merged the way from_pretrained merges them
// (tokenizer_config.json wins over special_tokens_map.json; added_tokens.json
// only adds tokens the config does not list).
struct HfTokenizerFiles {
  std::string dir;
  std::optional<std::string> tokenizer_class;
  std::map<int, AddedToken> added_tokens;  // id -> token
  // Special-token attributes; absent key = class default, null = None.
  std::map<std::string, std::optional<std::string>> special;  // "bos_token" -> "<s>"
  std::vector<std::string> additional_special_tokens;
  std::optional<bool> add_bos_token;
  std::optional<bool> add_eos_token;
  std::optional<bool> add_prefix_space;
  std::optional<bool> legacy;
  bool clean_up_tokenization_spaces = false;
  bool split_special_tokens = false;
};

absl::StatusOr<HfTokenizerFiles> ReadHfTokenizerFiles(const std::string& dir);

// PreTrainedTokenizer.clean_up_tokenization (" ." -> ".", " n't" -> "n't"...).
std::string CleanUpTokenization(std::string text);

class HfTokenizer : public Tokenizer {
 public:
  absl::StatusOr<std::vector<int>> Encode(absl::string_view text,
                                          const EncodeOptions& options) const override;
  std::string Decode(absl::Span<const int> ids, bool skip_special_tokens) const override;
  bool EndsWithIncompleteUtf8(absl::Span<const int> ids, bool skip_special_tokens) const override;
  std::optional<std::string> IdToToken(int id) const override;
  std::optional<int> TokenToId(absl::string_view token) const override;
  int size() const override { return size_; }
  std::optional<int> bos_token_id() const override { return SpecialId("bos_token"); }
  std::optional<int> eos_token_id() const override { return SpecialId("eos_token"); }
  std::optional<int> pad_token_id() const override { return SpecialId("pad_token"); }
  std::optional<int> unk_token_id() const override { return SpecialId("unk_token"); }
  bool is_special(int id) const override { return all_special_ids_.contains(id); }

 protected:
  // Builds the added-token table and special-token sets. Call once the base
  // vocabulary is usable (BaseTokenToId / vocab_size work). `defaults` are
  // the tokenizer class's __init__ defaults for special-token attributes.
  absl::Status InitAddedVocab(const HfTokenizerFiles& files,
                              const std::map<std::string, std::string>& defaults);

  // prepare_for_tokenization (Qwen2: NFC).
  virtual std::string PrepareForTokenization(absl::string_view text) const {
    return std::string(text);
  }
  // _tokenize + convert_tokens_to_ids for a piece of text holding no added
  // token (added tokens are looked up by TokenToId semantics by the caller
  // through `base_overrides_`).
  virtual absl::Status EncodeText(absl::string_view text, std::vector<int>* ids) const = 0;
  // build_inputs_with_special_tokens.
  virtual void AddSpecialTokens(std::vector<int>* ids) const {}
  // convert_tokens_to_string over one sub-text (ids and their token strings).
  virtual std::string ConvertTokensToString(const std::vector<int>& ids,
                                            std::vector<std::string> tokens) const = 0;
  // Whether the sub-text made of `ids` ends with an incomplete UTF-8 byte run.
  virtual bool SubTextEndsIncomplete(const std::vector<int>& ids) const = 0;
  // _decode's `spaces_between_special_tokens` default for this class.
  virtual bool spaces_between_special_tokens() const { return true; }
  virtual std::optional<int> BaseTokenToId(absl::string_view token) const = 0;
  virtual std::optional<std::string> BaseIdToToken(int id) const = 0;

  bool IsSpecialToken(absl::string_view token) const { return all_special_tokens_.contains(token); }
  const absl::flat_hash_map<std::string, int>& added_encoder() const { return added_encoder_; }

  bool clean_up_tokenization_spaces_ = false;
  bool split_special_tokens_default_ = false;

 private:
  std::optional<int> SpecialId(const std::string& attr) const;
  // tokens_trie.split: (text, added id or -1) pieces.
  std::vector<std::pair<absl::string_view, int>> SplitAddedTokens(absl::string_view text) const;
  // The filtered (id, token) list and sub-text grouping shared by Decode and
  // EndsWithIncompleteUtf8.
  struct SubText {
    bool is_legacy_added = false;
    std::vector<int> ids;
    std::vector<std::string> tokens;
  };
  std::vector<SubText> GroupSubTexts(absl::Span<const int> ids, bool skip_special_tokens) const;

  std::map<int, AddedToken> added_decoder_;
  absl::flat_hash_map<std::string, int> added_encoder_;
  // Added-token contents by first byte, longest first (leftmost-longest split).
  std::vector<std::vector<std::pair<std::string, int>>> added_by_first_byte_ =
      std::vector<std::vector<std::pair<std::string, int>>>(256);
  absl::flat_hash_set<std::string> all_special_tokens_;
  absl::flat_hash_set<int> all_special_ids_;
  absl::flat_hash_set<std::string> legacy_added_tokens_;
  // Base-vocabulary ids whose token string is also an added token: the
  // reference's convert_tokens_to_ids maps them to the added id.
  absl::flat_hash_map<int, int> base_overrides_;
  std::map<std::string, std::optional<std::string>> special_;  // resolved attributes
  int size_ = 0;
};

}  // namespace internvl::tokenizer
