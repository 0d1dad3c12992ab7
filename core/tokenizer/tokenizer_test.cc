// Behaviour of Tokenizer::Load and the API on the real tokenizer folders
// (shared/tokenizers) and on broken folders made in a temp dir.
#include "core/tokenizer/tokenizer.h"

#include <cctype>
#include <filesystem>
#include <fstream>

#include "core/config.h"
#include "core/testing/fixtures.h"
#include "core/tokenizer/chat_template.h"
#include "core/tokenizer/streaming_detokenizer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace internvl::tokenizer {
namespace {

using ::testing::HasSubstr;

void Write(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

TEST(TokenizerLoad, MissingFolderIsNotFound) {
  auto tok = Tokenizer::Load("/nonexistent/tokenizer/dir");
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kNotFound);
}

TEST(TokenizerLoad, FolderWithoutFilesNamesWhatWasLookedFor) {
  const std::string dir = testing::TempDir();
  auto tok = Tokenizer::Load(dir);
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(tok.status().message(), HasSubstr("vocab.json + merges.txt"));
  EXPECT_THAT(tok.status().message(), HasSubstr("tokenizer.model"));
}

TEST(TokenizerLoad, ConfigNamingSentencepieceWithoutModelNamesTokenizerModel) {
  const std::string dir = testing::TempDir();
  Write(dir + "/tokenizer_config.json", R"({"tokenizer_class": "InternLM2Tokenizer"})");
  auto tok = Tokenizer::Load(dir);
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(tok.status().message(), HasSubstr("tokenizer.model"));
}

TEST(TokenizerLoad, UnsupportedClassIsInvalidArgument) {
  const std::string dir = testing::TempDir();
  Write(dir + "/tokenizer_config.json", R"({"tokenizer_class": "BertTokenizer"})");
  auto tok = Tokenizer::Load(dir);
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(tok.status().message(), HasSubstr("BertTokenizer"));
}

TEST(TokenizerLoad, MalformedConfigIsInvalidArgument) {
  const std::string dir = testing::TempDir();
  Write(dir + "/tokenizer_config.json", "{not json");
  auto tok = Tokenizer::Load(dir);
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kInvalidArgument);
}

// vocab.json of a tiny byte-level BPE: 256 byte tokens (GPT-2 alphabet) and
// "he" (id 256), the result of the merge "h e".
std::string ByteLevelVocabJson() {
  std::string vocab = "{";
  int id = 0;
  auto add = [&](const std::string& token) {
    if (id) vocab += ",";
    vocab += "\"" +
             (token == "\""   ? std::string("\\\"")
              : token == "\\" ? std::string("\\\\")
                              : token) +
             "\":" + std::to_string(id++);
  };
  uint32_t n = 0;  // bytes_to_unicode's counter for non-printable bytes
  for (int b = 0; b < 256; ++b) {
    uint32_t cp = b;
    const bool direct = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
    if (!direct) cp = 256 + n++;
    std::string s;
    if (cp < 0x80)
      s.push_back(static_cast<char>(cp));
    else {
      s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
      s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
    add(s);
  }
  add("he");
  return vocab + "}";
}

// A tiny byte-level BPE made here: kind chosen from the files alone.
TEST(TokenizerLoad, BpeFilesWithoutConfigLoadAsQwen2) {
  const std::string dir = testing::TempDir();
  const std::string vocab = ByteLevelVocabJson();
  Write(dir + "/vocab.json", vocab);
  Write(dir + "/merges.txt", "#version: 0.2\nh e\n");
  auto tok = Tokenizer::Load(dir);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->kind(), Tokenizer::Kind::kQwen2Bpe);
  auto ids = (*tok)->Encode("hehe");
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(*ids, (std::vector<int>{256, 256}));
  EXPECT_EQ((*tok)->Decode(*ids), "hehe");
}

// Token ids near 2^31 in any of the files (a vocab.json entry, added_tokens.json,
// tokenizer_config.json's added_tokens_decoder) are refused at load, naming
// the file, instead of sizing tables by the largest id (tens of GB).
TEST(TokenizerLoad, HugeTokenIdsAreRefusedNotAllocated) {
  const std::string merges = "#version: 0.2\nh e\n";
  struct Case {
    const char* name;
    std::string vocab, added, config, file;
  };
  const std::vector<Case> cases = {
      {"vocab.json", R"({"h": 0, "e": 1, "he": 2147483000})", "", "", "vocabulary id 2147483000"},
      {"added_tokens.json", R"({"h": 0, "e": 1, "he": 2})", R"({"<x>": 2147483600})", "", "added_tokens.json"},
      {"added_tokens_decoder", R"({"h": 0, "e": 1, "he": 2})", "",
       R"({"tokenizer_class": "Qwen2Tokenizer", "added_tokens_decoder": {"2147483647": {"content": "<x>"}}})",
       "tokenizer_config.json"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string dir = testing::TempDir() + "/huge_" + std::to_string(&c - cases.data());
    std::filesystem::create_directories(dir);
    Write(dir + "/vocab.json", c.vocab);
    Write(dir + "/merges.txt", merges);
    if (!c.added.empty()) Write(dir + "/added_tokens.json", c.added);
    if (!c.config.empty()) Write(dir + "/tokenizer_config.json", c.config);
    auto tok = Tokenizer::Load(dir);
    ASSERT_FALSE(tok.ok());
    EXPECT_EQ(tok.status().code(), absl::StatusCode::kInvalidArgument) << tok.status();
    EXPECT_THAT(tok.status().message(), HasSubstr(c.file));
  }
}

// Mistyped fields are refused or skipped at load, never thrown as JSON type
// errors: an added token's flag given as a number (found by the
// tokenizer_files fuzzer), a tokenizer.json merge pair of non-strings.
TEST(TokenizerLoad, MistypedFieldsAreRefusedNotThrown) {
  const std::string dir = testing::TempDir() + "/mistyped";
  std::filesystem::create_directories(dir);
  Write(dir + "/vocab.json", R"({"h": 0, "e": 1, "he": 2})");
  Write(dir + "/merges.txt", "#version: 0.2\nh e\n");
  Write(dir + "/tokenizer_config.json",
        R"({"tokenizer_class": "Qwen2Tokenizer", "added_tokens_decoder": {"3": {"content": "<x>", "special": 1}}})");
  auto tok = Tokenizer::Load(dir);
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kInvalidArgument) << tok.status();
  EXPECT_THAT(tok.status().message(), HasSubstr("\"special\" must be true or false"));

  const std::string fast = testing::TempDir() + "/mistyped_fast";
  std::filesystem::create_directories(fast);
  Write(fast + "/tokenizer.json",
        R"({"model": {"vocab": )" + ByteLevelVocabJson() + R"(, "merges": [[1, 2], ["h", "e"]]}})");
  auto loaded = Tokenizer::Load(fast);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  auto ids = (*loaded)->Encode("he", {.add_special_tokens = false, .split_special_tokens = std::nullopt});
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_EQ(*ids, std::vector<int>{256});  // the well-typed merge applies
}

class RealTokenizers : public ::testing::TestWithParam<const char*> {};

TEST_P(RealTokenizers, InvalidUtf8IsRejectedWithOffset) {
  INTERNVL_REQUIRE_TOKENIZERS(tokenizers);
  auto tok = Tokenizer::Load(tokenizers + "/" + GetParam());
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto ids = (*tok)->Encode("ok\xC3(");
  ASSERT_FALSE(ids.ok());
  EXPECT_EQ(ids.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(ids.status().message(), HasSubstr("offset 2"));
}

TEST_P(RealTokenizers, StreamingHoldsBackPartialCharacters) {
  INTERNVL_REQUIRE_TOKENIZERS(tokenizers);
  auto tok = Tokenizer::Load(tokenizers + "/" + GetParam());
  ASSERT_TRUE(tok.ok()) << tok.status();
  // Rare CJK and emoji fall back to several byte tokens in every vocabulary.
  const std::string text = "龘靐齉爩 😀 𠀀𪚥 done";
  auto ids = (*tok)->Encode(text, {.add_special_tokens = false, .split_special_tokens = std::nullopt});
  ASSERT_TRUE(ids.ok());
  StreamingDetokenizer stream(tok->get());
  std::string all;
  for (int id : *ids) {
    const std::string piece = stream.Put(id);
    EXPECT_EQ(piece.find("\xEF\xBF\xBD"), std::string::npos) << "emitted a broken character";
    all += piece;
  }
  all += stream.Flush();
  EXPECT_EQ(all, (*tok)->Decode(*ids, true));
}

TEST_P(RealTokenizers, StreamingFlushRendersUnfinishedCharacterAsReplacement) {
  INTERNVL_REQUIRE_TOKENIZERS(tokenizers);
  auto tok = Tokenizer::Load(tokenizers + "/" + GetParam());
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto ids = (*tok)->Encode("𪚥", {.add_special_tokens = false, .split_special_tokens = std::nullopt});
  ASSERT_TRUE(ids.ok());
  if (ids->size() < 2) GTEST_SKIP() << "the character is a single token here";
  StreamingDetokenizer stream(tok->get());
  std::string all;
  for (size_t i = 0; i + 1 < ids->size(); ++i) all += stream.Put((*ids)[i]);
  EXPECT_EQ(all, "");
  EXPECT_THAT(stream.Flush(), HasSubstr("\xEF\xBF\xBD"));
}

TEST_P(RealTokenizers, StopIdsAreSeparatorThenGenerationEos) {
  INTERNVL_REQUIRE_TOKENIZERS(tokenizers);
  auto tok = Tokenizer::Load(tokenizers + "/" + GetParam());
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto t = GetTemplate("internvl2_5");
  ASSERT_TRUE(t.ok());
  GenerationConfig gen;
  const int im_end = *(*tok)->TokenToId("<|im_end|>");
  gen.eos_token_ids = {im_end, 12345};
  auto stop = StopTokenIds(**t, **tok, gen);
  ASSERT_TRUE(stop.ok()) << stop.status();
  EXPECT_EQ(*stop, (std::vector<int>{im_end, 12345}));
  EXPECT_TRUE((*tok)->is_special(im_end));
}

INSTANTIATE_TEST_SUITE_P(AllFolders, RealTokenizers,
                         ::testing::Values("internvl2-1b-qwen2", "internvl2_5-1b-qwen2_5", "internvl2-internlm2",
                                           "STANDIN-internvl2-40b-yi"),
                         [](const auto& info) {
                           std::string s = info.param;
                           for (char& c : s) {
                             if (!isalnum(static_cast<unsigned char>(c))) c = '_';
                           }
                           return s;
                         });

}  // namespace
}  // namespace internvl::tokenizer
