#include "core/tokenizer/sp_tokenizer.h"

#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "core/tokenizer/sp_processor.h"
#include "core/tokenizer/utf8.h"

namespace internvl::tokenizer {
namespace {

constexpr absl::string_view kSpieceUnderline = "\xE2\x96\x81";  // "▁"

class SentencePieceTokenizer final : public HfTokenizer {
 public:
  explicit SentencePieceTokenizer(Kind kind) : kind_(kind) {}

  Kind kind() const override { return kind_; }
  int vocab_size() const override { return sp_->piece_size(); }

  absl::Status Init(const HfTokenizerFiles& files) {
    const std::string model_path = files.dir + "/tokenizer.model";
    if (!std::filesystem::exists(model_path)) {
      return absl::NotFoundError(absl::StrCat("no sentencepiece model in ", files.dir,
                                              ": looked for tokenizer.model (",
                                              TokenizerKindName(kind_), " tokenizer)"));
    }
    std::string error;
    sp_ = SpProcessor::Load(model_path, &error);
    if (sp_ == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("loading ", model_path, ": ", error));
    }
    // Both classes default add_bos_token=True, add_eos_token=False.
    add_bos_ = files.add_bos_token.value_or(true);
    add_eos_ = files.add_eos_token.value_or(false);
    if (kind_ == Kind::kLlama) {
      // LlamaTokenizer: legacy=None means legacy=True (with a warning).
      // legacy=False re-encodes with a "<unk>" prefix and rewrites the
      // model's normaliser; InternVL2-40B does not use it.
      if (!files.legacy.value_or(true)) {
        return absl::UnimplementedError(absl::StrCat(
            files.dir, "/tokenizer_config.json sets legacy=false; only the legacy=true "
                       "LlamaTokenizer behaviour is implemented"));
      }
      add_prefix_space_ = files.add_prefix_space.value_or(true);
    }
    std::map<std::string, std::string> defaults = {
        {"unk_token", "<unk>"}, {"bos_token", "<s>"}, {"eos_token", "</s>"}};
    if (kind_ == Kind::kInternLM2) defaults["pad_token"] = "</s>";
    return InitAddedVocab(files, defaults);
  }

 protected:
  absl::Status EncodeText(absl::string_view text, std::vector<int>* ids) const override {
    // _tokenize = sp_model.encode(text, out_type=str), then
    // convert_tokens_to_ids: added tokens first, else piece_to_id.
    std::vector<std::string> pieces;
    std::string error;
    if (!sp_->EncodeAsPieces(std::string(text), &pieces, &error)) {
      return absl::InternalError(absl::StrCat("sentencepiece encode failed: ", error));
    }
    for (const std::string& piece : pieces) {
      auto it = added_encoder().find(piece);
      ids->push_back(it != added_encoder().end() ? it->second : sp_->PieceToId(piece));
    }
    return absl::OkStatus();
  }

  void AddSpecialTokens(std::vector<int>* ids) const override {
    // build_inputs_with_special_tokens: [bos] + ids + [eos] as configured.
    if (add_bos_) {
      if (auto bos = bos_token_id()) ids->insert(ids->begin(), *bos);
    }
    if (add_eos_) {
      if (auto eos = eos_token_id()) ids->push_back(*eos);
    }
  }

  std::string ConvertTokensToString(const std::vector<int>& ids,
                                    std::vector<std::string> tokens) const override {
    if (kind_ == Kind::kInternLM2) {
      // InternLM2Tokenizer.convert_tokens_to_string: a space before each run
      // of special tokens, clean_up_tokenization always, and
      // _maybe_add_prefix_space + [1:] (which cancel: it tests a token string
      // against a set of ids, so it always prepends the space it then drops).
      std::string out;
      std::vector<std::string> current;
      bool prev_is_special = false;
      for (std::string& token : tokens) {
        if (IsSpecialToken(token)) {
          if (!prev_is_special) out += " ";
          out += sp_->DecodePieces(current) + token;
          prev_is_special = true;
          current.clear();
        } else {
          current.push_back(std::move(token));
          prev_is_special = false;
        }
      }
      out += sp_->DecodePieces(current);
      return CleanUpTokenization(std::move(out));
    }
    // LlamaTokenizer.convert_tokens_to_string (legacy=True).
    if (add_prefix_space_ && absl::StartsWith(tokens[0], kSpieceUnderline)) {
      tokens[0] = tokens[0].substr(kSpieceUnderline.size());
    }
    std::string out;
    std::vector<std::string> current;
    bool prev_is_special = false;
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (IsSpecialToken(tokens[i])) {
        if (!prev_is_special && i != 0) out += " ";
        out += sp_->DecodePieces(current) + tokens[i];
        prev_is_special = true;
        current.clear();
      } else {
        if (prev_is_special && i == 1 && add_prefix_space_ &&
            !absl::StartsWith(tokens[i], kSpieceUnderline)) {
          out += " ";
        }
        current.push_back(std::move(tokens[i]));
        prev_is_special = false;
      }
    }
    out += sp_->DecodePieces(current);
    return out;
  }

  bool SubTextEndsIncomplete(const std::vector<int>& ids) const override {
    // Only a trailing run of byte-fallback pieces (<0xAB>) can hold part of a
    // character; sentencepiece decodes such a run as UTF-8.
    std::string bytes;
    for (size_t i = ids.size(); i-- > 0 && bytes.size() < 4;) {
      const int id = ids[i];
      if (id >= vocab_size() || !sp_->IsByte(id)) break;
      // Piece "<0xAB>" -> byte 0xAB.
      const std::string piece = sp_->IdToPiece(id);
      uint32_t value = 0;
      if (piece.size() != 6 || !absl::SimpleHexAtoi(piece.substr(3, 2), &value)) break;
      bytes.insert(bytes.begin(), static_cast<char>(value));
    }
    return IncompleteUtf8Suffix(bytes) > 0;
  }

  std::optional<int> BaseTokenToId(absl::string_view token) const override {
    const std::string piece(token);
    const int id = sp_->PieceToId(piece);
    if (id == sp_->unk_id() && sp_->IdToPiece(id) != piece) return std::nullopt;
    return id;
  }
  std::optional<std::string> BaseIdToToken(int id) const override {
    if (id < 0 || id >= vocab_size()) return std::nullopt;
    return sp_->IdToPiece(id);
  }

 private:
  Kind kind_;
  std::unique_ptr<SpProcessor> sp_;
  bool add_bos_ = true;
  bool add_eos_ = false;
  bool add_prefix_space_ = false;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadSentencePiece(const HfTokenizerFiles& files,
                                                             Tokenizer::Kind kind) {
  auto tokenizer = std::make_unique<SentencePieceTokenizer>(kind);
  INTERNVL_RETURN_IF_ERROR(tokenizer->Init(files));
  return std::unique_ptr<Tokenizer>(std::move(tokenizer));
}

}  // namespace internvl::tokenizer
