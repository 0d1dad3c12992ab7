#include "core/tokenizer/bpe_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "core/files.h"
#include "core/status.h"
#include "core/tokenizer/utf8.h"
#include "nlohmann/json.hpp"

namespace internvl::tokenizer {
namespace {

// Qwen2Tokenizer's PRETOKENIZE_REGEX (tokenization_qwen2.py):
//   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|
//   \s*[\r\n]+|\s+(?!\S)|\s+
// evaluated there with the `regex` module. PCRE2 (UTF + UCP) has the same
// \p{L} / \p{N}, but its \s also matches U+180E, which `regex`'s \s (the
// Unicode White_Space property) does not; \s and \S are therefore spelled
// out as that property.
#define INTERNVL_WS "\\t\\n\\x0B\\f\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"
constexpr char kPretokenizeRegex[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^" INTERNVL_WS
    "\\p{L}\\p{N}]+[\\r\\n]*|[" INTERNVL_WS "]*[\\r\\n]+|[" INTERNVL_WS "]+(?![^" INTERNVL_WS
    "])|[" INTERNVL_WS "]+";
#undef INTERNVL_WS

// GPT-2's bytes_to_unicode(): printable bytes map to themselves, the others
// to U+0100.. in byte order.
std::array<uint32_t, 256> BytesToUnicode() {
  std::array<uint32_t, 256> map{};
  std::array<bool, 256> direct{};
  for (int b = '!'; b <= '~'; ++b) direct[b] = true;
  for (int b = 0xA1; b <= 0xAC; ++b) direct[b] = true;
  for (int b = 0xAE; b <= 0xFF; ++b) direct[b] = true;
  uint32_t n = 0;
  for (int b = 0; b < 256; ++b) map[b] = direct[b] ? b : 256 + n++;
  return map;
}

uint64_t PairKey(int a, int b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

uint64_t NextSerial() {
  static std::atomic<uint64_t> serial{0};
  return ++serial;
}

struct Merge {
  int rank;
  int merged;
};

class Qwen2BpeTokenizer final : public HfTokenizer {
 public:
  ~Qwen2BpeTokenizer() override {
    if (regex_) pcre2_code_free(regex_);
  }

  Kind kind() const override { return Kind::kQwen2Bpe; }
  int vocab_size() const override { return static_cast<int>(id_to_token_.size()); }

  absl::Status Init(const HfTokenizerFiles& files) {
    const std::string vocab_path = files.dir + "/vocab.json";
    const std::string merges_path = files.dir + "/merges.txt";
    const std::string fast_path = files.dir + "/tokenizer.json";
    nlohmann::json vocab;
    std::vector<std::pair<std::string, std::string>> merges;
    if (std::filesystem::exists(vocab_path) && std::filesystem::exists(merges_path)) {
      INTERNVL_ASSIGN_OR_RETURN(std::string vocab_text, ReadFile(vocab_path));
      vocab = nlohmann::json::parse(vocab_text, nullptr, false);
      if (vocab.is_discarded() || !vocab.is_object()) {
        return absl::InvalidArgumentError(vocab_path + ": expected a JSON object token -> id");
      }
      INTERNVL_ASSIGN_OR_RETURN(std::string merges_text, ReadFile(merges_path));
      // As Qwen2Tokenizer.__init__: strip each line, skip a leading
      // "#version" line and empty lines, split on whitespace.
      int line_no = 0;
      for (absl::string_view line : absl::StrSplit(merges_text, '\n')) {
        line = absl::StripAsciiWhitespace(line);
        if ((line_no++ == 0 && absl::StartsWith(line, "#version")) || line.empty()) continue;
        std::vector<absl::string_view> parts = absl::StrSplit(line, ' ', absl::SkipEmpty());
        if (parts.size() != 2) continue;  // can never match a pair in the reference either
        merges.emplace_back(std::string(parts[0]), std::string(parts[1]));
      }
    } else if (std::filesystem::exists(fast_path)) {
      INTERNVL_ASSIGN_OR_RETURN(std::string text, ReadFile(fast_path));
      nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
      if (j.is_discarded() || !j.contains("model") || !j["model"].contains("vocab") ||
          !j["model"].contains("merges")) {
        return absl::InvalidArgumentError(fast_path + ": expected model.vocab and model.merges");
      }
      vocab = std::move(j["model"]["vocab"]);
      for (const auto& m : j["model"]["merges"]) {
        if (m.is_string()) {
          std::vector<std::string> parts = absl::StrSplit(m.get<std::string>(), ' ', absl::SkipEmpty());
          if (parts.size() == 2) merges.emplace_back(parts[0], parts[1]);
        } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
          merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
        }
      }
    } else {
      return absl::NotFoundError(absl::StrCat("no BPE vocabulary in ", files.dir,
                                              ": looked for vocab.json + merges.txt, tokenizer.json"));
    }

    int max_id = -1;
    for (const auto& [token, id] : vocab.items()) {
      if (!id.is_number_integer()) {
        return absl::InvalidArgumentError(absl::StrCat("vocabulary id of \"", token, "\" is not an integer"));
      }
      // Checked as int64 (get<int> would wrap 2^32 + 5 to 5): id_to_token_
      // is sized by the largest id.
      const int64_t value = id.get<int64_t>();
      if (value < 0 || value > kMaxTokenId) {
        return absl::InvalidArgumentError(absl::StrCat("vocabulary id ", value, " of \"", token,
                                                       "\" is outside [0, ", kMaxTokenId, "]"));
      }
      max_id = std::max(max_id, static_cast<int>(value));
    }
    id_to_token_.assign(max_id + 1, "");
    for (const auto& [token, id] : vocab.items()) {
      token_to_id_[token] = id.get<int>();
      id_to_token_[id.get<int>()] = token;
    }
    byte_to_unicode_ = BytesToUnicode();
    for (int b = 0; b < 256; ++b) {
      std::string s;
      AppendUtf8(byte_to_unicode_[b], &s);
      unicode_to_byte_[byte_to_unicode_[b]] = static_cast<unsigned char>(b);
      auto it = token_to_id_.find(s);
      if (it == token_to_id_.end()) {
        return absl::InvalidArgumentError(
            absl::StrCat("BPE vocabulary of ", files.dir, " lacks the token for byte ", b));
      }
      byte_token_[b] = it->second;
    }
    id_to_bytes_.resize(id_to_token_.size());
    for (size_t id = 0; id < id_to_token_.size(); ++id) id_to_bytes_[id] = TokenToBytes(id_to_token_[id]);
    merges_.reserve(merges.size());
    for (size_t rank = 0; rank < merges.size(); ++rank) {
      const auto& [a, b] = merges[rank];
      auto ia = token_to_id_.find(a), ib = token_to_id_.find(b), im = token_to_id_.find(a + b);
      if (ia == token_to_id_.end() || ib == token_to_id_.end() || im == token_to_id_.end()) continue;
      // dict(zip(merges, range(len))) keeps the LAST rank of a repeated pair.
      merges_[PairKey(ia->second, ib->second)] = Merge{static_cast<int>(rank), im->second};
    }

    int error_code;
    PCRE2_SIZE error_offset;
    regex_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(kPretokenizeRegex), PCRE2_ZERO_TERMINATED,
                           PCRE2_UTF | PCRE2_UCP, &error_code, &error_offset, nullptr);
    if (regex_ == nullptr) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(error_code, message, sizeof(message));
      return absl::InternalError(absl::StrCat("compiling the Qwen2 pre-tokenizer regex: ",
                                              reinterpret_cast<const char*>(message)));
    }
    pcre2_jit_compile(regex_, PCRE2_JIT_COMPLETE);  // falls back to the interpreter if unavailable

    return InitAddedVocab(files, {{"unk_token", "<|endoftext|>"},
                                  {"eos_token", "<|endoftext|>"},
                                  {"pad_token", "<|endoftext|>"}});
  }

 protected:
  std::string PrepareForTokenization(absl::string_view text) const override {
    return NormalizeNfc(text);  // Qwen2Tokenizer.prepare_for_tokenization
  }

  absl::Status EncodeText(absl::string_view text, std::vector<int>* ids) const override {
    pcre2_match_data* match = pcre2_match_data_create_from_pattern(regex_, nullptr);
    if (match == nullptr) return absl::ResourceExhaustedError("pcre2_match_data_create failed");
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    PCRE2_SIZE offset = 0;
    absl::Status status;
    while (offset < text.size()) {
      const int rc = pcre2_match(regex_, subject, text.size(), offset, PCRE2_NO_UTF_CHECK, match, nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) break;  // cannot happen: \s+ and \p classes cover everything
      if (rc < 0) {
        status = absl::InternalError(absl::StrCat("pre-tokenizer regex failed with code ", rc));
        break;
      }
      const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(match);
      const PCRE2_SIZE start = ovector[0], end = ovector[1];
      if (end == start) {  // an empty match (impossible with this pattern): step one character
        ++offset;
        while (offset < text.size() && (static_cast<unsigned char>(text[offset]) & 0xC0) == 0x80) ++offset;
        continue;
      }
      CachedBpe(text.substr(start, end - start), ids);
      offset = end;
    }
    pcre2_match_data_free(match);
    return status;
  }

  std::string ConvertTokensToString(const std::vector<int>& ids,
                                    std::vector<std::string> tokens) const override {
    // Qwen2Tokenizer.convert_tokens_to_string: bytes of every token, decoded
    // as UTF-8 with errors="replace".
    std::string bytes;
    for (size_t i = 0; i < ids.size(); ++i) {
      const int id = ids[i];
      if (id >= 0 && id < vocab_size() && tokens[i] == id_to_token_[id]) {
        bytes += id_to_bytes_[id];
      } else {
        bytes += TokenToBytes(tokens[i]);
      }
    }
    return DecodeUtf8Replace(bytes);
  }

  bool SubTextEndsIncomplete(const std::vector<int>& ids) const override {
    std::string tail;
    for (size_t i = ids.size(); i-- > 0 && tail.size() < 4;) {
      const int id = ids[i];
      const std::string bytes = id < vocab_size() ? id_to_bytes_[id] : TokenToBytes(*IdToToken(id));
      tail.insert(0, bytes);
    }
    return IncompleteUtf8Suffix(tail) > 0;
  }

  bool spaces_between_special_tokens() const override {
    return false;  // Qwen2Tokenizer._decode overrides the default to False
  }

  std::optional<int> BaseTokenToId(absl::string_view token) const override {
    auto it = token_to_id_.find(token);
    if (it == token_to_id_.end()) return std::nullopt;
    return it->second;
  }
  std::optional<std::string> BaseIdToToken(int id) const override {
    if (id < 0 || id >= vocab_size()) return std::nullopt;
    return id_to_token_[id];
  }

 private:
  // byte_decoder over a token's characters; characters outside the byte
  // alphabet (only possible in added-token text) keep their UTF-8.
  std::string TokenToBytes(absl::string_view token) const {
    std::string out;
    size_t i = 0;
    while (i < token.size()) {
      const unsigned char b = token[i];
      size_t len = b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
      len = std::min(len, token.size() - i);
      uint32_t cp = len == 1 ? b : b & (0xFF >> (len + 1));
      for (size_t k = 1; k < len; ++k) cp = (cp << 6) | (token[i + k] & 0x3F);
      auto it = unicode_to_byte_.find(cp);
      if (it != unicode_to_byte_.end()) {
        out.push_back(static_cast<char>(it->second));
      } else {
        out.append(token.data() + i, len);
      }
      i += len;
    }
    return out;
  }

  // Qwen2Tokenizer keeps a cache of bpe() results; so do we, per thread and
  // per tokenizer instance (a unique serial, not the address, which could be
  // reused by a later tokenizer), bounded so a long stream cannot grow it.
  void CachedBpe(absl::string_view word, std::vector<int>* out) const {
    constexpr size_t kMaxCachedWordBytes = 32;
    constexpr size_t kMaxCacheEntries = 1 << 16;
    if (word.size() == 1 || word.size() > kMaxCachedWordBytes) {
      Bpe(word, out);
      return;
    }
    struct Cache {
      uint64_t owner = 0;
      absl::flat_hash_map<std::string, std::vector<int>> words;
    };
    thread_local Cache cache;
    if (cache.owner != serial_ || cache.words.size() >= kMaxCacheEntries) {
      cache.owner = serial_;
      cache.words.clear();
    }
    auto [it, inserted] = cache.words.try_emplace(word);
    if (inserted) Bpe(word, &it->second);
    out->insert(out->end(), it->second.begin(), it->second.end());
  }

  // Qwen2Tokenizer.bpe on one pre-token: repeatedly merge the lowest-ranked
  // adjacent pair, all its occurrences left to right. A heap ordered by
  // (rank, position) visits merges in exactly that order (a merge's result
  // can only take part in merges of higher rank), in O(n log n).
  void Bpe(absl::string_view word, std::vector<int>* out) const {
    const int n = static_cast<int>(word.size());
    if (n == 1) {
      out->push_back(byte_token_[static_cast<unsigned char>(word[0])]);
      return;
    }
    struct Candidate {
      int rank, pos, right, left_id, right_id, merged;
      bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    thread_local std::vector<int> id, next, prev;
    thread_local std::vector<Candidate> heap;
    id.resize(n);
    next.resize(n);
    prev.resize(n);
    heap.clear();
    const auto min_first = [](const Candidate& a, const Candidate& b) { return a > b; };
    for (int i = 0; i < n; ++i) {
      id[i] = byte_token_[static_cast<unsigned char>(word[i])];
      prev[i] = i - 1;
      next[i] = i + 1 < n ? i + 1 : -1;
    }
    auto push = [&](int left, int right) {
      auto it = merges_.find(PairKey(id[left], id[right]));
      if (it != merges_.end()) {
        heap.push_back(Candidate{it->second.rank, left, right, id[left], id[right], it->second.merged});
        std::push_heap(heap.begin(), heap.end(), min_first);
      }
    };
    for (int i = 0; i + 1 < n; ++i) push(i, i + 1);
    while (!heap.empty()) {
      std::pop_heap(heap.begin(), heap.end(), min_first);
      const Candidate c = heap.back();
      heap.pop_back();
      if (id[c.pos] != c.left_id || next[c.pos] != c.right || id[c.right] != c.right_id) continue;
      id[c.pos] = c.merged;
      const int after = next[c.right];
      next[c.pos] = after;
      if (after >= 0) prev[after] = c.pos;
      id[c.right] = -1;
      next[c.right] = -2;
      if (prev[c.pos] >= 0) push(prev[c.pos], c.pos);
      if (after >= 0) push(c.pos, after);
    }
    for (int i = 0; i >= 0; i = next[i]) out->push_back(id[i]);
  }

  absl::flat_hash_map<std::string, int> token_to_id_;
  std::vector<std::string> id_to_token_;
  std::vector<std::string> id_to_bytes_;
  absl::flat_hash_map<uint64_t, Merge> merges_;
  std::array<uint32_t, 256> byte_to_unicode_{};
  absl::flat_hash_map<uint32_t, unsigned char> unicode_to_byte_;
  std::array<int, 256> byte_token_{};
  pcre2_code* regex_ = nullptr;
  const uint64_t serial_ = NextSerial();
};

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadQwen2Bpe(const HfTokenizerFiles& files) {
  auto tokenizer = std::make_unique<Qwen2BpeTokenizer>();
  INTERNVL_RETURN_IF_ERROR(tokenizer->Init(files));
  return std::unique_ptr<Tokenizer>(std::move(tokenizer));
}

}  // namespace internvl::tokenizer
