#include "core/tokenizer/hf_tokenizer.h"

#include <algorithm>
#include <filesystem>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "core/files.h"
#include "core/status.h"
#include "core/tokenizer/utf8.h"
#include "nlohmann/json.hpp"

namespace internvl::tokenizer {
namespace {

using nlohmann::json;

constexpr const char* kSpecialAttributes[] = {"bos_token", "eos_token", "unk_token", "sep_token",
                                              "pad_token", "cls_token", "mask_token"};

absl::StatusOr<std::optional<json>> ReadOptionalJson(const std::string& path) {
  if (!std::filesystem::exists(path)) return std::optional<json>();
  INTERNVL_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(path, ": not valid JSON"));
  return std::optional<json>(std::move(j));
}

// A special-token value: "<s>", {"content": "<s>", ...} or null.
absl::StatusOr<std::optional<std::string>> TokenValue(const json& v, const std::string& where) {
  if (v.is_null()) return std::optional<std::string>();
  if (v.is_string()) return std::optional<std::string>(v.get<std::string>());
  if (v.is_object() && v.contains("content") && v["content"].is_string()) {
    return std::optional<std::string>(v["content"].get<std::string>());
  }
  return absl::InvalidArgumentError(absl::StrCat(where, ": expected a token string or object"));
}

absl::StatusOr<std::vector<std::string>> TokenList(const json& v, const std::string& where) {
  std::vector<std::string> out;
  if (v.is_null()) return out;
  if (!v.is_array()) return absl::InvalidArgumentError(absl::StrCat(where, ": expected a list"));
  for (const json& item : v) {
    INTERNVL_ASSIGN_OR_RETURN(std::optional<std::string> s, TokenValue(item, where));
    if (s) out.push_back(*s);
  }
  return out;
}

// j[key] as a flag: `fallback` where absent or null, INVALID_ARGUMENT where
// it is not a boolean.
absl::StatusOr<bool> BoolOr(const json& j, const char* key, bool fallback, const std::string& where) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  if (!j[key].is_boolean()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": \"", key, "\" must be true or false"));
  }
  return j[key].get<bool>();
}

std::optional<bool> OptionalBool(const json& j, const char* key) {
  if (j.contains(key) && j[key].is_boolean()) return j[key].get<bool>();
  return std::nullopt;
}

bool IsAsciiSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

}  // namespace

absl::StatusOr<HfTokenizerFiles> ReadHfTokenizerFiles(const std::string& dir) {
  HfTokenizerFiles files;
  files.dir = dir;
  const std::string config_path = dir + "/tokenizer_config.json";
  INTERNVL_ASSIGN_OR_RETURN(std::optional<json> config, ReadOptionalJson(config_path));
  INTERNVL_ASSIGN_OR_RETURN(std::optional<json> special_map,
                            ReadOptionalJson(dir + "/special_tokens_map.json"));
  INTERNVL_ASSIGN_OR_RETURN(std::optional<json> added_json,
                            ReadOptionalJson(dir + "/added_tokens.json"));
  if (config) {
    const json& c = *config;
    if (!c.is_object()) return absl::InvalidArgumentError(config_path + ": expected an object");
    if (c.contains("tokenizer_class") && c["tokenizer_class"].is_string()) {
      files.tokenizer_class = c["tokenizer_class"].get<std::string>();
    }
    if (c.contains("added_tokens_decoder")) {
      const json& decoder = c["added_tokens_decoder"];
      if (!decoder.is_object()) {
        return absl::InvalidArgumentError(config_path + ": added_tokens_decoder must be an object");
      }
      for (const auto& [key, value] : decoder.items()) {
        int id;
        if (!absl::SimpleAtoi(key, &id) || id < 0 || id > kMaxTokenId || !value.is_object() ||
            !value.contains("content") || !value["content"].is_string()) {
          return absl::InvalidArgumentError(
              absl::StrCat(config_path, ": bad added_tokens_decoder entry \"", key, "\""));
        }
        AddedToken token;
        token.content = value["content"].get<std::string>();
        const std::string entry = absl::StrCat(config_path, " added_tokens_decoder \"", key, "\"");
        INTERNVL_ASSIGN_OR_RETURN(token.special, BoolOr(value, "special", false, entry));
        INTERNVL_ASSIGN_OR_RETURN(token.lstrip, BoolOr(value, "lstrip", false, entry));
        INTERNVL_ASSIGN_OR_RETURN(token.rstrip, BoolOr(value, "rstrip", false, entry));
        files.added_tokens[id] = std::move(token);
      }
    }
    for (const char* attr : kSpecialAttributes) {
      if (!c.contains(attr)) continue;
      INTERNVL_ASSIGN_OR_RETURN(files.special[attr],
                                TokenValue(c[attr], absl::StrCat(config_path, " ", attr)));
    }
    if (c.contains("additional_special_tokens")) {
      INTERNVL_ASSIGN_OR_RETURN(
          files.additional_special_tokens,
          TokenList(c["additional_special_tokens"], config_path + " additional_special_tokens"));
    }
    files.add_bos_token = OptionalBool(c, "add_bos_token");
    files.add_eos_token = OptionalBool(c, "add_eos_token");
    files.add_prefix_space = OptionalBool(c, "add_prefix_space");
    files.legacy = OptionalBool(c, "legacy");
    files.clean_up_tokenization_spaces = OptionalBool(c, "clean_up_tokenization_spaces").value_or(false);
    files.split_special_tokens = OptionalBool(c, "split_special_tokens").value_or(false);
  }
  if (special_map && special_map->is_object()) {
    const json& m = *special_map;
    for (const char* attr : kSpecialAttributes) {
      if (files.special.count(attr) || !m.contains(attr)) continue;
      INTERNVL_ASSIGN_OR_RETURN(files.special[attr], TokenValue(m[attr], "special_tokens_map.json"));
    }
    if (files.additional_special_tokens.empty() && m.contains("additional_special_tokens")) {
      INTERNVL_ASSIGN_OR_RETURN(files.additional_special_tokens,
                                TokenList(m["additional_special_tokens"], "special_tokens_map.json"));
    }
  }
  if (added_json) {
    if (!added_json->is_object()) {
      return absl::InvalidArgumentError(dir + "/added_tokens.json: expected an object");
    }
    for (const auto& [content, value] : added_json->items()) {
      if (!value.is_number_integer() || value.get<int64_t>() < 0 || value.get<int64_t>() > kMaxTokenId) {
        return absl::InvalidArgumentError(
            absl::StrCat(dir, "/added_tokens.json: ids must be integers in [0, ", kMaxTokenId, "]"));
      }
      const int id = value.get<int>();
      if (!files.added_tokens.count(id)) files.added_tokens[id] = AddedToken{content};
    }
  }
  return files;
}

std::string CleanUpTokenization(std::string text) {
  // PreTrainedTokenizerBase.clean_up_tokenization, replacements in its order.
  static const std::pair<const char*, const char*> kReplacements[] = {
      {" .", "."},     {" ?", "?"},     {" !", "!"},     {" ,", ","},     {" ' ", "'"},
      {" n't", "n't"}, {" 'm", "'m"},   {" 's", "'s"},   {" 've", "'ve"}, {" 're", "'re"}};
  for (const auto& [from, to] : kReplacements) {
    if (text.find(from) != std::string::npos) text = absl::StrReplaceAll(text, {{from, to}});
  }
  return text;
}

absl::Status HfTokenizer::InitAddedVocab(const HfTokenizerFiles& files,
                                         const std::map<std::string, std::string>& defaults) {
  clean_up_tokenization_spaces_ = files.clean_up_tokenization_spaces;
  split_special_tokens_default_ = files.split_special_tokens;
  added_decoder_ = files.added_tokens;
  for (const char* attr : kSpecialAttributes) {
    auto it = files.special.find(attr);
    if (it != files.special.end()) {
      special_[attr] = it->second;
    } else if (auto d = defaults.find(attr); d != defaults.end()) {
      special_[attr] = d->second;
    }
  }
  std::vector<std::string> all_special;
  for (const auto& [attr, value] : special_) {
    if (value) all_special.push_back(*value);
  }
  for (const std::string& t : files.additional_special_tokens) all_special.push_back(t);

  for (const auto& [id, token] : added_decoder_) added_encoder_[token.content] = id;
  int max_id = vocab_size() - 1;
  for (const auto& [id, token] : added_decoder_) max_id = std::max(max_id, id);
  // As PreTrainedTokenizer.__init__: every special token becomes an added
  // token, keeping its vocabulary id when it has one.
  for (const std::string& t : all_special) {
    if (added_encoder_.contains(t)) continue;
    std::optional<int> id = BaseTokenToId(t);
    if (!id) id = ++max_id;
    if (added_decoder_.count(*id)) continue;
    added_decoder_[*id] = AddedToken{t, /*special=*/true};
    added_encoder_[t] = *id;
  }
  size_ = max_id + 1;

  for (const std::string& t : all_special) {
    all_special_tokens_.insert(t);
    if (auto id = TokenToId(t)) all_special_ids_.insert(*id);
  }
  // _decode's legacy_added_tokens: added tokens that are not special, plus
  // additional special tokens beyond the base vocabulary. Each becomes its own
  // sub-text instead of going through convert_tokens_to_string.
  for (const auto& [content, id] : added_encoder_) {
    if (!all_special_tokens_.contains(content)) legacy_added_tokens_.insert(content);
  }
  for (const std::string& t : files.additional_special_tokens) {
    if (auto id = TokenToId(t); id && *id >= vocab_size()) legacy_added_tokens_.insert(t);
  }
  for (const auto& [id, token] : added_decoder_) {
    if (token.content.empty()) continue;
    if (auto base = BaseTokenToId(token.content); base && *base != id) base_overrides_[*base] = id;
    added_by_first_byte_[static_cast<unsigned char>(token.content[0])].emplace_back(token.content, id);
  }
  for (auto& bucket : added_by_first_byte_) {
    std::stable_sort(bucket.begin(), bucket.end(),
                     [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
  }
  return absl::OkStatus();
}

std::optional<int> HfTokenizer::SpecialId(const std::string& attr) const {
  auto it = special_.find(attr);
  if (it == special_.end() || !it->second) return std::nullopt;
  return TokenToId(*it->second);
}

std::vector<std::pair<absl::string_view, int>> HfTokenizer::SplitAddedTokens(
    absl::string_view text) const {
  std::vector<std::pair<absl::string_view, int>> out;
  size_t start = 0, i = 0;
  while (i < text.size()) {
    const auto& bucket = added_by_first_byte_[static_cast<unsigned char>(text[i])];
    bool matched = false;
    for (const auto& [content, id] : bucket) {
      if (text.compare(i, content.size(), content) == 0) {
        if (i > start) out.emplace_back(text.substr(start, i - start), -1);
        out.emplace_back(text.substr(i, content.size()), id);
        i += content.size();
        start = i;
        matched = true;
        break;
      }
    }
    if (!matched) ++i;
  }
  if (start < text.size()) out.emplace_back(text.substr(start), -1);
  return out;
}

absl::StatusOr<std::vector<int>> HfTokenizer::Encode(absl::string_view text,
                                                     const EncodeOptions& options) const {
  if (const size_t bad = FindInvalidUtf8(text); bad != kUtf8Valid) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "text is not valid UTF-8: ill-formed sequence at byte offset %d (byte 0x%02X)", bad,
        static_cast<unsigned char>(text[bad])));
  }
  const std::string prepared = PrepareForTokenization(text);
  std::vector<std::pair<absl::string_view, int>> pieces;
  if (options.split_special_tokens.value_or(split_special_tokens_default_)) {
    pieces.emplace_back(prepared, -1);
  } else {
    pieces = SplitAddedTokens(prepared);
    // AddedToken.lstrip / rstrip eat the whitespace of the neighbouring text.
    for (size_t i = 0; i < pieces.size(); ++i) {
      if (pieces[i].second < 0) continue;
      const AddedToken& token = added_decoder_.at(pieces[i].second);
      if (token.rstrip && i + 1 < pieces.size() && pieces[i + 1].second < 0) {
        absl::string_view& right = pieces[i + 1].first;
        while (!right.empty() && IsAsciiSpace(right.front())) right.remove_prefix(1);
      }
      if (token.lstrip && i > 0 && pieces[i - 1].second < 0) {
        absl::string_view& left = pieces[i - 1].first;
        while (!left.empty() && IsAsciiSpace(left.back())) left.remove_suffix(1);
      }
    }
  }
  std::vector<int> ids;
  for (const auto& [piece, id] : pieces) {
    if (id >= 0) {
      ids.push_back(id);
    } else if (!piece.empty()) {
      const size_t first = ids.size();
      INTERNVL_RETURN_IF_ERROR(EncodeText(piece, &ids));
      if (!base_overrides_.empty()) {
        for (size_t k = first; k < ids.size(); ++k) {
          if (auto it = base_overrides_.find(ids[k]); it != base_overrides_.end()) ids[k] = it->second;
        }
      }
    }
  }
  if (options.add_special_tokens) AddSpecialTokens(&ids);
  return ids;
}

std::vector<HfTokenizer::SubText> HfTokenizer::GroupSubTexts(absl::Span<const int> ids,
                                                             bool skip_special_tokens) const {
  std::vector<SubText> groups;
  SubText current;
  for (const int id : ids) {
    if (id < 0 || id >= size_) continue;
    if (skip_special_tokens && all_special_ids_.contains(id)) continue;
    std::optional<std::string> token = IdToToken(id);
    if (!token) continue;
    if (skip_special_tokens && all_special_tokens_.contains(*token)) continue;
    if (legacy_added_tokens_.contains(*token)) {
      if (!current.ids.empty()) groups.push_back(std::move(current));
      current = SubText();
      SubText legacy;
      legacy.is_legacy_added = true;
      legacy.ids.push_back(id);
      legacy.tokens.push_back(std::move(*token));
      groups.push_back(std::move(legacy));
    } else {
      current.ids.push_back(id);
      current.tokens.push_back(std::move(*token));
    }
  }
  if (!current.ids.empty()) groups.push_back(std::move(current));
  return groups;
}

std::string HfTokenizer::Decode(absl::Span<const int> ids, bool skip_special_tokens) const {
  std::vector<SubText> groups = GroupSubTexts(ids, skip_special_tokens);
  std::vector<std::string> sub_texts;
  for (size_t g = 0; g < groups.size(); ++g) {
    SubText& group = groups[g];
    if (group.is_legacy_added) {
      sub_texts.push_back(std::move(group.tokens[0]));
      continue;
    }
    std::string s = ConvertTokensToString(group.ids, std::move(group.tokens));
    // _decode drops an empty sub-text only when a legacy added token flushes
    // it, never the final one.
    if (!s.empty() || g + 1 == groups.size()) sub_texts.push_back(std::move(s));
  }
  std::string text = absl::StrJoin(sub_texts, spaces_between_special_tokens() ? " " : "");
  if (clean_up_tokenization_spaces_) text = CleanUpTokenization(std::move(text));
  return text;
}

bool HfTokenizer::EndsWithIncompleteUtf8(absl::Span<const int> ids, bool skip_special_tokens) const {
  std::vector<SubText> groups = GroupSubTexts(ids, skip_special_tokens);
  if (groups.empty() || groups.back().is_legacy_added) return false;
  return SubTextEndsIncomplete(groups.back().ids);
}

std::optional<std::string> HfTokenizer::IdToToken(int id) const {
  if (auto it = added_decoder_.find(id); it != added_decoder_.end()) return it->second.content;
  if (id < 0 || id >= vocab_size()) return std::nullopt;
  return BaseIdToToken(id);
}

std::optional<int> HfTokenizer::TokenToId(absl::string_view token) const {
  if (auto it = added_encoder_.find(token); it != added_encoder_.end()) return it->second;
  return BaseTokenToId(token);
}

}  // namespace internvl::tokenizer
