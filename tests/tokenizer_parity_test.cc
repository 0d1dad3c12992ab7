// Parity of the tokenizers with the reference vectors in
// shared/fixtures/tokenization (HF transformers 4.47 slow tokenizers and
// InternVL's InternLM2Tokenizer): every field of every case, for every
// tokenizer folder in shared/tokenizers; the chat-template prompts and their
// ids; and the tiny fixture models' prompts against their X_input_ids.
#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/files.h"
#include "core/safetensors.h"
#include "core/testing/fixtures.h"
#include "core/tokenizer/chat_template.h"
#include "core/tokenizer/streaming_detokenizer.h"
#include "core/tokenizer/tokenizer.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace internvl::tokenizer {
namespace {

using nlohmann::json;

json ReadJson(const std::string& path) {
  auto text = ReadFile(path);
  EXPECT_TRUE(text.ok()) << text.status();
  return text.ok() ? json::parse(*text) : json();
}

std::string Show(const std::vector<int>& ids) { return absl::StrCat("[", absl::StrJoin(ids, ", "), "]"); }

struct FolderCase {
  const char* fixture;  // file in fixtures/tokenization
  const char* folder;   // folder in shared/tokenizers
  Tokenizer::Kind kind;
};

class TokenizerParity : public ::testing::TestWithParam<FolderCase> {};

// Counts mismatches per field; prints the first few of each.
struct FieldReport {
  std::map<std::string, int> failures;
  int cases = 0;
  bool Check(bool ok, const std::string& field, const std::string& detail) {
    if (ok) return true;
    if (failures[field]++ < 5) ADD_FAILURE() << field << ": " << detail;
    return false;
  }
};

TEST_P(TokenizerParity, EveryCaseEveryFieldMatchesReference) {
  INTERNVL_REQUIRE_FIXTURES(fixtures);
  INTERNVL_REQUIRE_TOKENIZERS(tokenizers);
  const FolderCase& param = GetParam();
  const json fixture = ReadJson(fixtures + "/tokenization/" + param.fixture);
  auto tok_or = Tokenizer::Load(tokenizers + "/" + param.folder);
  ASSERT_TRUE(tok_or.ok()) << tok_or.status();
  const Tokenizer& tok = **tok_or;
  EXPECT_EQ(tok.kind(), param.kind);
  EXPECT_EQ(tok.size(), fixture["special_tokens"]["len"].get<int>());
  EXPECT_EQ(tok.vocab_size(), fixture["special_tokens"]["vocab_size"].get<int>());

  FieldReport report;
  for (const json& c : fixture["cases"]) {
    ++report.cases;
    const std::string text = c["text"].get<std::string>();
    const std::string where = absl::StrCat(c["id"].get<std::string>(), " ", json(text).dump());
    const auto ids = c["ids"].get<std::vector<int>>();
    const auto ids_no_special = c["ids_no_special"].get<std::vector<int>>();

    auto got = tok.Encode(text);
    report.Check(got.ok() && *got == ids, "ids",
                 absl::StrCat(where, " got ", got.ok() ? Show(*got) : got.status().ToString(),
                              " want ", Show(ids)));
    got = tok.Encode(text, {.add_special_tokens = false, .split_special_tokens = std::nullopt});
    report.Check(got.ok() && *got == ids_no_special, "ids_no_special",
                 absl::StrCat(where, " got ", got.ok() ? Show(*got) : got.status().ToString(),
                              " want ", Show(ids_no_special)));
    const auto want_split = c["ids_split_special_tokens"].get<std::vector<int>>();
    got = tok.Encode(text, {.add_special_tokens = false, .split_special_tokens = true});
    report.Check(got.ok() && *got == want_split, "ids_split_special_tokens",
                 absl::StrCat(where, " got ", got.ok() ? Show(*got) : got.status().ToString(),
                              " want ", Show(want_split)));

    std::vector<std::string> tokens;
    for (int id : ids) tokens.push_back(tok.IdToToken(id).value_or("<none>"));
    report.Check(tokens == c["tokens"].get<std::vector<std::string>>(), "tokens",
                 absl::StrCat(where, " got ", json(tokens).dump()));

    const auto check_text = [&](const std::string& field, const std::string& got_text) {
      report.Check(got_text == c[field].get<std::string>(), field,
                   absl::StrCat(where, " got ", json(got_text).dump(), " want ", c[field].dump()));
    };
    check_text("decode", tok.Decode(ids, false));
    check_text("decode_skip_special", tok.Decode(ids, true));
    check_text("decode_no_special_skip_special", tok.Decode(ids_no_special, true));

    const auto prefixes = c["stream_prefix_decodes"].get<std::vector<std::string>>();
    for (size_t k = 1; k <= prefixes.size(); ++k) {
      const std::string prefix = tok.Decode(absl::MakeConstSpan(ids).subspan(0, k), true);
      if (!report.Check(prefix == prefixes[k - 1], "stream_prefix_decodes",
                        absl::StrCat(where, " k=", k, " got ", json(prefix).dump(), " want ",
                                     json(prefixes[k - 1]).dump()))) {
        break;
      }
    }

    // Our streaming API: never a partial character, and the pieces add up to
    // the full decode. Where the reference's prefix decode has no U+FFFD (no
    // pending partial character), what was emitted so far equals it.
    StreamingDetokenizer stream(&tok, /*skip_special_tokens=*/true);
    std::string streamed;
    bool stream_ok = true;
    for (size_t k = 0; k < ids.size(); ++k) {
      streamed += stream.Put(ids[k]);
      if (k < prefixes.size() && prefixes[k].find("\xEF\xBF\xBD") == std::string::npos &&
          text.find("\xEF\xBF\xBD") == std::string::npos && streamed != prefixes[k]) {
        stream_ok = report.Check(false, "streaming_prefix",
                                 absl::StrCat(where, " k=", k + 1, " streamed ", json(streamed).dump(),
                                              " want ", json(prefixes[k]).dump()));
        break;
      }
    }
    if (stream_ok) {
      streamed += stream.Flush();
      report.Check(streamed == tok.Decode(ids, true), "streaming_concat",
                   absl::StrCat(where, " streamed ", json(streamed).dump()));
    }
  }
  for (const auto& [field, n] : report.failures) {
    ADD_FAILURE() << param.fixture << ": " << field << " wrong in " << n << "/" << report.cases << " cases";
  }
  std::cout << param.fixture << ": " << report.cases << " cases, "
            << (report.failures.empty() ? "all fields exact" : "MISMATCHES") << "\n";
}

INSTANTIATE_TEST_SUITE_P(
    AllFolders, TokenizerParity,
    ::testing::Values(FolderCase{"qwen2.json", "internvl2-1b-qwen2", Tokenizer::Kind::kQwen2Bpe},
                      FolderCase{"qwen2_5.json", "internvl2_5-1b-qwen2_5", Tokenizer::Kind::kQwen2Bpe},
                      FolderCase{"internlm2.json", "internvl2-internlm2", Tokenizer::Kind::kInternLM2},
                      FolderCase{"yi_standin.json", "STANDIN-internvl2-40b-yi", Tokenizer::Kind::kLlama}),
    [](const auto& info) {
      std::string name = info.param.fixture;
      return name.substr(0, name.find('.'));
    });

}  // namespace
}  // namespace internvl::tokenizer
