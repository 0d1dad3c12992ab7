// Parity of the tokenizers with the reference vectors in
// shared/fixtures/tokenization (HF transformers 4.47 slow tokenizers and
// InternVL's InternLM2Tokenizer): every field of every case, for every
// tokenizer folder in shared/tokenizers; the chat-template prompts and their
// ids; and the tiny fixture models' prompts against their X_input_ids.
#include <algorithm>
#include <cstring>
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
                 absl::StrCat(where, " got ", got.ok() ? Show(*got) : got.status().ToString(), " want ", Show(ids)));
    got = tok.Encode(text, {.add_special_tokens = false, .split_special_tokens = std::nullopt});
    report.Check(
        got.ok() && *got == ids_no_special, "ids_no_special",
        absl::StrCat(where, " got ", got.ok() ? Show(*got) : got.status().ToString(), " want ", Show(ids_no_special)));
    const auto want_split = c["ids_split_special_tokens"].get<std::vector<int>>();
    got = tok.Encode(text, {.add_special_tokens = false, .split_special_tokens = true});
    report.Check(
        got.ok() && *got == want_split, "ids_split_special_tokens",
        absl::StrCat(where, " got ", got.ok() ? Show(*got) : got.status().ToString(), " want ", Show(want_split)));

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
      if (!report.Check(
              prefix == prefixes[k - 1], "stream_prefix_decodes",
              absl::StrCat(where, " k=", k, " got ", json(prefix).dump(), " want ", json(prefixes[k - 1]).dump()))) {
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
        stream_ok = report.Check(
            false, "streaming_prefix",
            absl::StrCat(where, " k=", k + 1, " streamed ", json(streamed).dump(), " want ", json(prefixes[k]).dump()));
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

// chat_templates.json: the prompt before and after <image> expansion, and its
// ids for every tokenizer listed, plus the stop and IMG_CONTEXT ids.
TEST(ChatTemplateParity, EveryPromptAndItsIdsMatchReference) {
  INTERNVL_REQUIRE_FIXTURES(fixtures);
  INTERNVL_REQUIRE_TOKENIZERS(tokenizers);
  const json fixture = ReadJson(fixtures + "/tokenization/chat_templates.json");
  std::map<std::string, std::unique_ptr<Tokenizer>> loaded;
  int prompts = 0, tokenized = 0;
  for (const json& c : fixture["prompts"]) {
    ++prompts;
    const std::string where = absl::StrCat(c["template"].get<std::string>(), "/", c["scenario"].get<std::string>());
    auto chat_template = GetTemplate(c["template"].get<std::string>());
    ASSERT_TRUE(chat_template.ok()) << chat_template.status();
    EXPECT_EQ((*chat_template)->system_message, c["system_message"].get<std::string>()) << where;
    EXPECT_EQ((*chat_template)->sep, c["sep"].get<std::string>()) << where;
    const auto num_patches = c["num_patches_list"].get<std::vector<int>>();
    ChatHistory history;
    if (!c["history"].is_null()) history = c["history"].get<ChatHistory>();
    const std::string question =
        BuildChatQuestion(c["question"].get<std::string>(), !num_patches.empty(), !c["history"].is_null());
    const std::string prompt =
        RenderPrompt(**chat_template, SystemMessageFor(**chat_template, std::nullopt), history, question);
    EXPECT_EQ(prompt, c["prompt_before_image_expansion"].get<std::string>()) << where;
    auto expanded = ExpandImageTokens(prompt, num_patches, c["num_image_token"].get<int>());
    ASSERT_TRUE(expanded.ok()) << expanded.status();
    EXPECT_EQ(*expanded, c["prompt"].get<std::string>()) << where;

    for (const auto& [name, t] : c["tokenized"].items()) {
      const std::string folder = t["tokenizer_folder"].get<std::string>();
      if (!loaded.count(folder)) {
        auto tok = Tokenizer::Load(tokenizers + "/" + folder);
        ASSERT_TRUE(tok.ok()) << tok.status();
        loaded[folder] = std::move(*tok);
      }
      const Tokenizer& tok = *loaded[folder];
      ++tokenized;
      auto ids = tok.Encode(*expanded);
      ASSERT_TRUE(ids.ok()) << ids.status();
      EXPECT_EQ(*ids, t["ids"].get<std::vector<int>>()) << where << " " << name;
      const int img_context = t["img_context_token_id"].get<int>();
      EXPECT_EQ(tok.TokenToId(kImgContextToken), img_context) << where << " " << name;
      EXPECT_EQ(std::count(ids->begin(), ids->end(), img_context), t["num_img_context_ids"].get<int>())
          << where << " " << name;
      auto stop = StopTokenIds(**chat_template, tok, GenerationConfig{});
      ASSERT_TRUE(stop.ok()) << stop.status();
      EXPECT_EQ(stop->front(), t["eos_token_id_used_by_chat"].get<int>()) << where << " " << name;
    }
  }
  EXPECT_EQ(prompts, 24);
  std::cout << "chat_templates.json: " << prompts << " prompts, " << tokenized << " tokenizations checked\n";
}

// "<IMG_CONTEXT*256>" in expected.json stands for 256 copies of the token.
std::string ExpandCollapsed(const std::string& collapsed) {
  const std::string marker = "<IMG_CONTEXT*256>";
  std::string out;
  size_t pos = 0;
  for (size_t at; (at = collapsed.find(marker, pos)) != std::string::npos; pos = at + marker.size()) {
    out += collapsed.substr(pos, at - pos);
    for (int i = 0; i < 256; ++i) out += kImgContextToken;
  }
  return out + collapsed.substr(pos);
}

// Row `row` of an int64 [rows, n] tensor, keeping only positions whose mask
// is 1 (left padding of batch_chat).
std::vector<int> IdsRow(const TensorView& ids, const TensorView* mask, int64_t row) {
  const int64_t n = ids.shape.back();
  // Tensor data in a safetensors file need not be 8-byte aligned: memcpy.
  auto at = [&](const TensorView& t, int64_t i) {
    int64_t v;
    std::memcpy(&v, t.data + 8 * (row * n + i), 8);
    return v;
  };
  std::vector<int> out;
  for (int64_t i = 0; i < n; ++i) {
    if (!mask || at(*mask, i) == 1) out.push_back(static_cast<int>(at(ids, i)));
  }
  return out;
}

class TinyModelPrompts : public ::testing::TestWithParam<const char*> {};

// The tiny fixture models' own tokenizers load, the queries chat() built
// tokenize to exactly the input ids the reference fed the model, and our
// template code rebuilds the single-image and video queries.
TEST_P(TinyModelPrompts, QueriesTokenizeToReferenceInputIds) {
  INTERNVL_REQUIRE_FIXTURES(fixtures);
  const std::string dir = fixtures + "/" + GetParam();
  auto tok_or = Tokenizer::Load(dir);
  ASSERT_TRUE(tok_or.ok()) << tok_or.status();
  const Tokenizer& tok = **tok_or;
  const json expected = ReadJson(dir + "/expected.json");
  auto st = SafetensorsFile::Open(dir + "/expected.safetensors");
  ASSERT_TRUE(st.ok()) << st.status();
  const json& cases = expected["cases"];

  struct Query {
    std::string name, tensor, text;
    int64_t row;
  };
  std::vector<Query> queries = {{"A", "A_input_ids", cases["A_single_image_chat"]["query_collapsed"], 0},
                                {"B", "B_input_ids", cases["B_multi_turn"]["query_collapsed"], 0},
                                {"D", "D_input_ids", cases["D_pure_text"]["query"], 0},
                                {"E", "E_input_ids", cases["E_video"]["query_collapsed"], 0}};
  const auto batch = cases["C_batch_chat"]["queries_collapsed"].get<std::vector<std::string>>();
  for (size_t i = 0; i < batch.size(); ++i)
    queries.push_back({absl::StrCat("C", i), "C_input_ids", batch[i], int64_t(i)});
  for (const Query& q : queries) {
    const TensorView* ids = (*st)->Find(q.tensor);
    ASSERT_NE(ids, nullptr) << q.tensor;
    const TensorView* mask = q.tensor == "C_input_ids" ? (*st)->Find("C_attention_mask") : nullptr;
    auto got = tok.Encode(ExpandCollapsed(q.text));
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(*got, IdsRow(*ids, mask, q.row)) << GetParam() << " case " << q.name;
  }

  // Rebuild A (single image, auto "<image>\n" already in question_as_sent)
  // and E (video) from the model's config.
  auto config = LoadInternVLConfig(dir);
  ASSERT_TRUE(config.ok()) << config.status();
  auto chat_template = GetTemplate(config->template_name);
  ASSERT_TRUE(chat_template.ok()) << chat_template.status();
  EXPECT_EQ(expected["template"].get<std::string>(), config->template_name);
  const std::string system = SystemMessageFor(**chat_template, config->system_message);
  EXPECT_EQ(system, expected["system_message"].get<std::string>());
  const json& a = cases["A_single_image_chat"];
  auto prompt_a = ExpandImageTokens(RenderPrompt(**chat_template, system, {}, a["question_as_sent"].get<std::string>()),
                                    {a["n_tiles"].get<int>()}, config->num_image_token());
  ASSERT_TRUE(prompt_a.ok()) << prompt_a.status();
  EXPECT_EQ(*prompt_a, ExpandCollapsed(a["query_collapsed"].get<std::string>()));
  const json& e = cases["E_video"];
  const auto frames = e["num_patches_list"].get<std::vector<int>>();
  auto prompt_e = ExpandImageTokens(
      RenderPrompt(**chat_template, system, {},
                   BuildVideoQuestion(static_cast<int>(frames.size()), "What is happening in the video?")),
      frames, config->num_image_token());
  ASSERT_TRUE(prompt_e.ok()) << prompt_e.status();
  EXPECT_EQ(*prompt_e, ExpandCollapsed(e["query_collapsed"].get<std::string>()));
  auto stop = StopTokenIds(**chat_template, tok, GenerationConfig{});
  ASSERT_TRUE(stop.ok()) << stop.status();
  EXPECT_EQ(stop->front(), expected["eos_token_id_used"].get<int>());
  EXPECT_EQ(tok.TokenToId(kImgContextToken), expected["img_context_token_id"].get<int>());
}

INSTANTIATE_TEST_SUITE_P(AllTinyModels, TinyModelPrompts,
                         ::testing::Values("tiny-qwen2", "tiny-internlm2", "tiny-llama"), [](const auto& info) {
                           std::string name = info.param;
                           return name.substr(5);
                         });

}  // namespace
}  // namespace internvl::tokenizer
