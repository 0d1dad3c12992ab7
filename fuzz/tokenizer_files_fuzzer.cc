// Fuzzes Tokenizer::Load on hostile tokenizer folders: arbitrary vocab.json,
// merges.txt, tokenizer_config.json, special_tokens_map.json,
// added_tokens.json and tokenizer.json written to a scratch folder. Loading
// must fail with a status or give a tokenizer whose Encode / Decode work; it
// must never crash or allocate without bound (e.g. a vocabulary id near
// 2^31 must not size tables by it).
//
// Input: the files packed as parts separated by "\n@@@@\n", in the order of
// kFiles below; a missing part means the file is absent.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "core/tokenizer/tokenizer.h"
#include "core/tokenizer/utf8.h"
#include "fuzz/fuzz_util.h"

namespace internvl::fuzz {
namespace {

constexpr const char* kFiles[] = {
    "vocab.json",        "merges.txt",    "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "tokenizer.json"};
constexpr size_t kNumFiles = sizeof(kFiles) / sizeof(kFiles[0]);

// Texts run through a tokenizer that loaded.
constexpr absl::string_view kProbes[] = {
    "Hello, world! 123",
    "<|im_start|>user\n<image>\n<img><IMG_CONTEXT></img>what?<|im_end|>\n<|im_start|>assistant\n",
    "  tabs\tand\nnewlines\r\n  ",
    "caf\xC3\xA9 \xE4\xBD\xA0\xE5\xA5\xBD \xF0\x9F\x98\x80",
};

}  // namespace
}  // namespace internvl::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace internvl::fuzz;
  using internvl::tokenizer::Tokenizer;
  if (size > kMaxInputBytes) return 0;
  const absl::string_view input(reinterpret_cast<const char*>(data), size);
  const auto parts = WriteScratchFiles(input, kPartSeparator, kFiles, kNumFiles);
  auto tok = Tokenizer::Load(ScratchDir());
  if (!tok.ok()) return 0;
  const Tokenizer& t = **tok;
  (void)t.bos_token_id();
  (void)t.eos_token_id();
  (void)t.pad_token_id();
  (void)t.unk_token_id();
  std::vector<absl::string_view> texts(std::begin(kProbes), std::end(kProbes));
  for (const auto& part : parts)
    if (internvl::tokenizer::FindInvalidUtf8(part) == internvl::tokenizer::kUtf8Valid && part.size() < 4096)
      texts.push_back(part);
  for (absl::string_view text : texts) {
    for (bool special : {false, true}) {
      internvl::tokenizer::EncodeOptions options;
      options.add_special_tokens = special;
      auto ids = t.Encode(text, options);
      if (!ids.ok()) continue;
      for (int id : *ids)
        if (id < 0 || id >= t.size()) {
          std::fprintf(stderr, "Encode produced id %d outside [0, %d)\n", id, t.size());
          std::abort();
        }
      (void)t.Decode(*ids, special);
      (void)t.EndsWithIncompleteUtf8(*ids, special);
    }
  }
  // Every id around the vocabulary's edges and a sample inside it.
  std::vector<int> ids;
  const int n = t.size();
  for (int id = -2; id < 300 && id < n + 2; ++id) ids.push_back(id);
  for (int id = n - 300; id < n + 2; ++id)
    if (id >= 300) ids.push_back(id);
  for (int id : ids) {
    if (auto token = t.IdToToken(id)) (void)t.TokenToId(*token);
  }
  (void)t.Decode(ids, false);
  (void)t.Decode(ids, true);
  return 0;
}
