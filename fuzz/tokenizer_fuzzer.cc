// Fuzzes Encode / Decode of the real InternVL tokenizers (every folder of
// $INTERNVL_TOKENIZERS, default ../shared/tokenizers beside the repo, loaded
// once): arbitrary bytes as text (repaired to UTF-8 where ill-formed, as the
// callers holding raw bytes do), and as token ids for Decode, the streaming
// detokenizer and the id <-> token lookups.
//
// Input: one selector byte (tokenizer index and flags), then the payload.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "core/tokenizer/streaming_detokenizer.h"
#include "core/tokenizer/tokenizer.h"
#include "core/tokenizer/utf8.h"
#include "fuzz/fuzz_util.h"

namespace internvl::fuzz {
namespace {

using tokenizer::Tokenizer;

// Text longer than this is cut (NFC + BPE are linear, but keep execs fast).
constexpr size_t kMaxTextBytes = 16 << 10;
// Ids decoded per input.
constexpr size_t kMaxIds = 4096;

const std::vector<std::unique_ptr<Tokenizer>>& Tokenizers() {
  static const auto* all = [] {
    auto* v = new std::vector<std::unique_ptr<Tokenizer>>();
    const std::string root = SharedDir("INTERNVL_TOKENIZERS", "tokenizers");
    std::vector<std::string> dirs;
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(root, ec))
      if (entry.is_directory()) dirs.push_back(entry.path().string());
    std::sort(dirs.begin(), dirs.end());  // a stable index -> tokenizer mapping
    for (const std::string& dir : dirs) {
      auto tok = Tokenizer::Load(dir);
      if (!tok.ok()) {
        std::fprintf(stderr, "tokenizer_fuzzer: cannot load %s: %s\n", dir.c_str(), tok.status().ToString().c_str());
        std::abort();
      }
      v->push_back(std::move(*tok));
    }
    if (v->empty()) {
      std::fprintf(stderr, "tokenizer_fuzzer: no tokenizers under %s (set INTERNVL_TOKENIZERS)\n", root.c_str());
      std::abort();
    }
    return v;
  }();
  return *all;
}

void CheckIds(const Tokenizer& tok, const std::vector<int>& ids) {
  for (int id : ids)
    if (id < 0 || id >= tok.size()) {
      std::fprintf(stderr, "Encode produced id %d outside [0, %d)\n", id, tok.size());
      std::abort();
    }
}

}  // namespace
}  // namespace internvl::fuzz

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  internvl::fuzz::Tokenizers();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace internvl::fuzz;
  using internvl::tokenizer::EncodeOptions;
  if (size < 1 || size > kMaxInputBytes) return 0;
  const auto& all = Tokenizers();
  const uint8_t selector = data[0];
  const Tokenizer& tok = *all[(selector & 0x0F) % all.size()];
  const bool add_special = selector & 0x10;
  const bool skip_special = selector & 0x20;
  absl::string_view payload(reinterpret_cast<const char*>(data) + 1, size - 1);
  if (payload.size() > kMaxTextBytes) payload = payload.substr(0, kMaxTextBytes);

  // The payload as text.
  EncodeOptions options;
  options.add_special_tokens = add_special;
  if (selector & 0x40) options.split_special_tokens = (selector & 0x80) != 0;
  auto ids = tok.Encode(payload, options);
  if (internvl::tokenizer::FindInvalidUtf8(payload) == internvl::tokenizer::kUtf8Valid) {
    if (!ids.ok()) {
      std::fprintf(stderr, "valid UTF-8 refused: %s\n", ids.status().ToString().c_str());
      std::abort();
    }
  } else {
    if (ids.ok()) std::abort();  // ill-formed text must be refused
    ids = tok.Encode(internvl::tokenizer::DecodeUtf8Replace(payload), options);
    if (!ids.ok()) std::abort();
  }
  CheckIds(tok, *ids);
  const std::string text = tok.Decode(*ids, skip_special);
  if (internvl::tokenizer::FindInvalidUtf8(text) != internvl::tokenizer::kUtf8Valid) {
    std::fprintf(stderr, "Decode produced ill-formed UTF-8\n");
    std::abort();
  }
  (void)tok.EndsWithIncompleteUtf8(*ids, skip_special);
  (void)tok.TokenToId(payload);

  // The payload as little-endian int32 ids (any value: negative, huge).
  std::vector<int> raw;
  for (size_t i = 0; i + 4 <= payload.size() && raw.size() < kMaxIds; i += 4) {
    uint32_t u = ReadU32(payload, i);
    int id;
    std::memcpy(&id, &u, sizeof(id));
    // Half the time fold into the vocabulary so valid ids are common.
    if ((u & 0x80000000u) == 0 && tok.size() > 0) id = static_cast<int>(u % static_cast<uint32_t>(tok.size() + 8));
    raw.push_back(id);
  }
  const std::string decoded = tok.Decode(raw, skip_special);
  if (internvl::tokenizer::FindInvalidUtf8(decoded) != internvl::tokenizer::kUtf8Valid) std::abort();
  (void)tok.EndsWithIncompleteUtf8(raw, skip_special);
  for (size_t i = 0; i < raw.size() && i < 64; ++i) {
    if (auto token = tok.IdToToken(raw[i])) (void)tok.TokenToId(*token);
  }
  internvl::tokenizer::StreamingDetokenizer detok(&tok, skip_special);
  std::string streamed;
  for (int id : raw) streamed += detok.Put(id);
  streamed += detok.Flush();
  return 0;
}
