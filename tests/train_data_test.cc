// The fine-tuning data pipeline (core/train/data.h).
//
// Parity (fixtures): every sample of ../shared/fixtures/training/<config>/ —
// input_ids, labels, attention_mask, position_ids, image_flags exactly, the
// pixel values' per-tile per-channel sums and first row, the fully-masked
// set — and the collated batches of train.safetensors, for preprocess_mpt
// (Hermes-2), preprocess_internlm (internlm2-chat) and preprocess_internvl2_5.
//
// Behaviour (no fixtures: a byte-level BPE tokenizer and BMP images generated
// in a temp dir): bad records are errors naming "dataset:line" while the rest
// of the dataset loads, repeat_time, system turns, placeholder counts,
// truncation, per-dataset max_dynamic_patch, the collator's padding.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "core/config.h"
#include "core/modelgen/byte_bpe.h"
#include "core/safetensors.h"
#include "core/testing/fixtures.h"
#include "core/tokenizer/chat_template.h"
#include "core/train/data.h"
#include "core/train/data_preprocess.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace internvl::train {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using json = nlohmann::json;

// ---------------------------------------------------------------------------
// Helpers

template <typename T>
std::vector<T> ViewAs(const TensorView& v) {
  std::vector<T> out(v.nbytes / sizeof(T));
  std::memcpy(out.data(), v.data, out.size() * sizeof(T));
  return out;
}

template <typename T>
std::vector<T> TensorOrDie(const SafetensorsFile& f, const std::string& name, DType dtype) {
  const TensorView* v = f.Find(name);
  EXPECT_NE(v, nullptr) << name << " missing in " << f.path();
  if (v == nullptr) return {};
  EXPECT_EQ(v->dtype, dtype) << name;
  return ViewAs<T>(*v);
}

// First index where two sequences differ (for readable failures).
template <typename A, typename B>
std::string FirstDiff(const std::vector<A>& a, const std::vector<B>& b) {
  if (a.size() != b.size()) return absl::StrCat("sizes ", a.size(), " vs ", b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    if (static_cast<int64_t>(a[i]) != static_cast<int64_t>(b[i])) {
      return absl::StrCat("first difference at ", i, ": ", static_cast<int64_t>(a[i]), " vs ",
                          static_cast<int64_t>(b[i]));
    }
  }
  return "equal";
}

void Write(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
}

// A 24-bit uncompressed BMP whose pixel (x, y) is fn(x, y) -> {r, g, b}.
template <typename Fn>
void WriteBmp(const std::string& path, int w, int h, Fn fn) {
  const int row = (w * 3 + 3) / 4 * 4;
  const uint32_t data_size = row * h, file_size = 54 + data_size;
  std::string b(file_size, '\0');
  auto put32 = [&](size_t at, uint32_t v) {
    for (int k = 0; k < 4; ++k) b[at + k] = static_cast<char>((v >> (8 * k)) & 0xFF);
  };
  auto put16 = [&](size_t at, uint16_t v) {
    b[at] = static_cast<char>(v & 0xFF);
    b[at + 1] = static_cast<char>(v >> 8);
  };
  b[0] = 'B';
  b[1] = 'M';
  put32(2, file_size);
  put32(10, 54);
  put32(14, 40);
  put32(18, w);
  put32(22, h);
  put16(26, 1);
  put16(28, 24);
  put32(34, data_size);
  for (int y = 0; y < h; ++y) {
    const size_t base = 54 + static_cast<size_t>(h - 1 - y) * row;  // bottom-up
    for (int x = 0; x < w; ++x) {
      const auto [r, g, bl] = fn(x, y);
      b[base + 3 * x] = static_cast<char>(bl);
      b[base + 3 * x + 1] = static_cast<char>(g);
      b[base + 3 * x + 2] = static_cast<char>(r);
    }
  }
  Write(path, b);
}

struct Rgb {
  int r, g, b;
};

// A temp folder with a generated tokenizer, two images and helpers to write
// a meta file + annotation.
class GeneratedData : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::TempDir();
    fs::create_directories(dir_ + "/tok");
    auto info = modelgen::WriteByteBpeTokenizer(dir_ + "/tok", 40);
    ASSERT_TRUE(info.ok()) << info.status();
    auto tok = tokenizer::Tokenizer::Load(dir_ + "/tok");
    ASSERT_TRUE(tok.ok()) << tok.status();
    tok_ = std::move(*tok);
    fs::create_directories(dir_ + "/media");
    WriteBmp(dir_ + "/media/wide.bmp", 400, 100, [](int x, int y) { return Rgb{x % 256, y * 2, 128}; });
    WriteBmp(dir_ + "/media/square.bmp", 64, 64, [](int x, int y) { return Rgb{200, x * 4, y * 4}; });
  }

  // Writes meta.json with one dataset per entry of `datasets` (name ->
  // (jsonl lines, extra meta fields)) and returns its path.
  std::string WriteMeta(const std::vector<std::tuple<std::string, std::vector<std::string>, json>>& datasets) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();  // keeps dataset order
    for (const auto& [name, lines, extra] : datasets) {
      std::string text;
      for (const std::string& l : lines) text += l + "\n";
      Write(dir_ + "/" + name + ".jsonl", text);
      nlohmann::ordered_json entry = {{"root", "media"},
                                      {"annotation", name + ".jsonl"},
                                      {"data_augment", false},
                                      {"repeat_time", 1},
                                      {"length", lines.size()}};
      for (const auto& [k, v] : extra.items()) entry[k] = v;
      meta[name] = entry;
    }
    const std::string path = dir_ + "/meta_" + std::to_string(meta_counter_++) + ".json";
    Write(path, meta.dump());
    return path;
  }

  DataOptions Options(const std::string& conv_style) const {
    DataOptions o;
    o.conv_style = conv_style;
    o.max_dynamic_patch = 4;
    o.num_image_token = 4;  // short prompts
    return o;
  }

  std::unique_ptr<SftDataset> OpenOrDie(const std::string& meta, const DataOptions& o) {
    auto ds = SftDataset::Open(meta, *tok_, o);
    EXPECT_TRUE(ds.ok()) << ds.status();
    return ds.ok() ? std::move(*ds) : nullptr;
  }

  // The text of the supervised tokens (labels != -100), in order.
  std::string LabelText(const Sample& s) const {
    std::vector<int> ids;
    for (int64_t l : s.labels) {
      if (l != kIgnoreIndex) ids.push_back(static_cast<int>(l));
    }
    return tok_->Decode(ids);
  }

  std::string dir_;
  int meta_counter_ = 0;
  std::unique_ptr<tokenizer::Tokenizer> tok_;
};

std::string Record(const json& r) { return r.dump(); }

json Conv(const std::vector<std::pair<std::string, std::string>>& turns) {
  json c = json::array();
  for (const auto& [from, value] : turns) c.push_back({{"from", from}, {"value", value}});
  return c;
}

// ---------------------------------------------------------------------------
// Behaviour without fixtures

TEST_F(GeneratedData, BadRecordsAreErrorsNamingTheLineAndTheRestLoads) {
  const std::vector<std::string> lines = {
      Record({{"conversations", Conv({{"human", "Hi"}, {"gpt", "Hello."}})}}),
      "{\"conversations\": [ not json",
      Record({{"image", "missing.png"}, {"conversations", Conv({{"human", "<image>\nWhat?"}, {"gpt", "A."}})}}),
      Record({{"image", "square.bmp"},
              {"conversations", Conv({{"system", "Be terse."}, {"human", "<image>\nWhat?"}, {"gpt", "A."}})}}),
      Record({{"image", {"square.bmp", "wide.bmp"}},
              {"conversations", Conv({{"human", "Image-1: <image>\nCompare."}, {"gpt", "Same."}})}}),
      Record({{"image", "square.bmp"}, {"conversations", Conv({{"human", "What is it?"}, {"gpt", "Squares."}})}}),
      Record({{"id", 7}}),
  };
  const std::string meta = WriteMeta({{"mixed", lines, json::object()}});
  auto ds = OpenOrDie(meta, Options("Hermes-2"));
  ASSERT_NE(ds, nullptr);
  ASSERT_EQ(ds->size(), lines.size());

  std::map<size_t, absl::Status> errors;
  int ok = 0;
  for (size_t i = 0; i < ds->size(); ++i) {
    absl::StatusOr<Sample> s = ds->Get(i);
    if (s.ok()) {
      ++ok;
      EXPECT_EQ(s->source, absl::StrCat("mixed:", i + 1));
    } else {
      EXPECT_THAT(s.status().message(), HasSubstr(absl::StrCat("mixed:", i + 1, ": "))) << s.status();
      errors[i] = s.status();
    }
  }
  EXPECT_EQ(ok, 2);  // lines 1 and 6
  ASSERT_EQ(errors.size(), 5u);
  EXPECT_THAT(errors[1].message(), HasSubstr("malformed JSON"));
  EXPECT_EQ(errors[2].code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(errors[2].message(), HasSubstr("missing.png"));
  EXPECT_THAT(errors[3].message(), HasSubstr("\"system\" turn"));
  EXPECT_THAT(errors[3].message(), HasSubstr("preprocess_mpt"));
  EXPECT_THAT(errors[4].message(), HasSubstr("1 images made it into the tokens for 2 images"));
  EXPECT_THAT(errors[6].message(), HasSubstr("conversations"));
  // The same answer twice (Get is deterministic and keeps no state).
  EXPECT_EQ(ds->Get(3).status(), errors[3]);
  EXPECT_EQ(ds->Get(ds->size()).status().code(), absl::StatusCode::kOutOfRange);
}

TEST_F(GeneratedData, SingleImageGetsPlaceholderTilesAndLabels) {
  const std::string meta =
      WriteMeta({{"one",
                  {Record({{"image", "wide.bmp"}, {"conversations", Conv({{"human", "What?"}, {"gpt", "Stripes."}})}})},
                  json::object()}});
  auto ds = OpenOrDie(meta, Options("Hermes-2"));
  ASSERT_NE(ds, nullptr);
  absl::StatusOr<Sample> s = ds->Get(0);
  ASSERT_TRUE(s.ok()) << s.status();
  // 400x100 with max 4 tiles: a 4x1 grid plus the thumbnail.
  EXPECT_EQ(s->image_flags, std::vector<int64_t>(5, 1));
  EXPECT_EQ(s->pixel_values.shape, (std::vector<int64_t>{5, 3, kDefaultImageSize, kDefaultImageSize}));
  const int ctx = *tok_->TokenToId(tokenizer::kImgContextToken);
  EXPECT_EQ(std::count(s->input_ids.begin(), s->input_ids.end(), ctx), 5 * 4);
  // "<image>\n" was prepended: the image comes right after the user role.
  const std::string text = tok_->Decode(std::vector<int>(s->input_ids.begin(), s->input_ids.end()));
  EXPECT_THAT(text, HasSubstr("<|im_start|>user\n<img><IMG_CONTEXT>"));
  EXPECT_THAT(text, HasSubstr("</img>\nWhat?<|im_end|>"));
  EXPECT_EQ(LabelText(*s), "Stripes.<|im_end|>");
  EXPECT_FALSE(s->fully_masked);
  // position_ids = cumsum(mask) - 1 with no pad inside.
  for (size_t i = 0; i < s->position_ids.size(); ++i) EXPECT_EQ(s->position_ids[i], static_cast<int64_t>(i));
}

TEST_F(GeneratedData, DatasetMaxDynamicPatchOverridesTheOption) {
  const std::string rec =
      Record({{"image", "wide.bmp"}, {"conversations", Conv({{"human", "<image>\nWhat?"}, {"gpt", "Stripes."}})}});
  const std::string meta = WriteMeta({{"plain", {rec}, json::object()}, {"capped", {rec}, {{"max_dynamic_patch", 2}}}});
  auto ds = OpenOrDie(meta, Options("internvl2_5"));
  ASSERT_NE(ds, nullptr);
  ASSERT_EQ(ds->size(), 2u);
  auto a = ds->Get(0), b = ds->Get(1);
  ASSERT_TRUE(a.ok() && b.ok()) << a.status() << b.status();
  EXPECT_EQ(a->image_flags.size(), 5u);  // 4 + thumbnail
  EXPECT_EQ(b->image_flags.size(), 3u);  // 2 + thumbnail
  EXPECT_EQ(ds->SourceOf(1), "capped:1");
}

TEST_F(GeneratedData, MultiImageSplitsTheTileBudgetAndNeedsEveryPlaceholder) {
  const std::string meta = WriteMeta(
      {{"multi",
        {Record({{"image", {"square.bmp", "wide.bmp"}},
                 {"conversations", Conv({{"human", "A: <image>\nB: <image>\nCompare."}, {"gpt", "Different."}})}})},
        json::object()}});
  auto ds = OpenOrDie(meta, Options("internvl2_5"));
  ASSERT_NE(ds, nullptr);
  absl::StatusOr<Sample> s = ds->Get(0);
  ASSERT_TRUE(s.ok()) << s.status();
  // max(1, 4 / 2) = 2 tiles each: square -> 1 tile, wide -> 2 + thumbnail.
  EXPECT_EQ(s->image_flags.size(), 1u + 3u);
  const std::string text = tok_->Decode(std::vector<int>(s->input_ids.begin(), s->input_ids.end()));
  EXPECT_THAT(text, HasSubstr("A: <img><IMG_CONTEXT><IMG_CONTEXT><IMG_CONTEXT><IMG_CONTEXT></img>\nB: <img>"));
}

// With a data root (the trainer service's), media that resolve outside it are
// refused: absolute paths, ../ escapes and symlinks alike.
TEST_F(GeneratedData, DataRootConfinesMediaPaths) {
  const std::string outside = testing::TempDir();
  WriteBmp(outside + "/secret.bmp", 32, 32, [](int x, int y) { return Rgb{x, y, 0}; });
  fs::create_symlink(outside + "/secret.bmp", dir_ + "/media/link.bmp");
  auto conv = Conv({{"human", "<image>\nWhat?"}, {"gpt", "This."}});
  const std::string meta = WriteMeta({{"d",
                                       {Record({{"image", outside + "/secret.bmp"}, {"conversations", conv}}),
                                        Record({{"image", "../../" + fs::path(outside).filename().string() +
                                                              "/secret.bmp"},
                                                {"conversations", conv}}),
                                        Record({{"image", "link.bmp"}, {"conversations", conv}}),
                                        Record({{"image", "square.bmp"}, {"conversations", conv}})},
                                       json::object()}});
  DataOptions confined = Options("internvl2_5");
  confined.data_root = dir_;
  auto ds = OpenOrDie(meta, confined);
  ASSERT_NE(ds, nullptr);
  for (size_t i = 0; i < 3; ++i) {
    absl::StatusOr<Sample> s = ds->Get(i);
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument) << "record " << i;
    EXPECT_THAT(s.status().message(), HasSubstr("outside the data root")) << "record " << i;
  }
  EXPECT_TRUE(ds->Get(3).ok());
  // Without one, the official os.path.join semantics (absolute paths allowed).
  auto open = OpenOrDie(meta, Options("internvl2_5"));
  ASSERT_NE(open, nullptr);
  EXPECT_TRUE(open->Get(0).ok());
}

// A record listing thousands of images is refused before any is read (each
// image needs at least one tile of tokens).
TEST_F(GeneratedData, ThousandsOfImagesAreRefusedBeforeLoading) {
  json images = json::array();
  for (int i = 0; i < 5000; ++i) images.push_back("missing_" + std::to_string(i) + ".bmp");
  const std::string meta =
      WriteMeta({{"many", {Record({{"image", images}, {"conversations", Conv({{"human", "Hi"}, {"gpt", "Hello."}})}})},
                  json::object()}});
  auto ds = OpenOrDie(meta, Options("internvl2_5"));
  ASSERT_NE(ds, nullptr);
  const absl::Time start = absl::Now();
  absl::StatusOr<Sample> s = ds->Get(0);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.status().message(), HasSubstr("max_seq_length"));  // not "missing_0.bmp: not found"
  EXPECT_LT(absl::Now() - start, absl::Seconds(1));
}

TEST_F(GeneratedData, PureTextGetsOneWhiteDummyTileWithFlagZero) {
  const std::string meta =
      WriteMeta({{"text",
                  {Record({{"conversations", Conv({{"human", "Say <image> literally"}, {"gpt", "<image>"}})}})},
                  json::object()}});
  auto ds = OpenOrDie(meta, Options("Hermes-2"));
  ASSERT_NE(ds, nullptr);
  absl::StatusOr<Sample> s = ds->Get(0);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->image_flags, std::vector<int64_t>{0});
  ASSERT_EQ(s->pixel_values.shape, (std::vector<int64_t>{1, 3, kDefaultImageSize, kDefaultImageSize}));
  // White normalised: (1 - mean) / std per channel.
  const float* px = s->pixel_values.data<float>();
  const int64_t plane = int64_t{kDefaultImageSize} * kDefaultImageSize;
  for (int c = 0; c < 3; ++c) {
    EXPECT_FLOAT_EQ(px[c * plane + 1234], (1.0f - kImageNetMean[c]) / kImageNetStd[c]);
  }
  // text_only: "<image>" stays text, no image tokens.
  const int img = *tok_->TokenToId(tokenizer::kImgStartToken);
  EXPECT_EQ(std::count(s->input_ids.begin(), s->input_ids.end(), img), 0);
  EXPECT_EQ(LabelText(*s), "<image><|im_end|>");
}

TEST_F(GeneratedData, SystemTurnReplacesTheSystemPromptUnderInternVL25) {
  const std::string meta =
      WriteMeta({{"sys",
                  {Record({{"image", "square.bmp"},
                           {"conversations",
                            Conv({{"system", "Be terse."}, {"human", "<image>\nShape?"}, {"gpt", "Square."}})}})},
                  json::object()}});
  auto ds = OpenOrDie(meta, Options("internvl2_5"));
  ASSERT_NE(ds, nullptr);
  absl::StatusOr<Sample> s = ds->Get(0);
  ASSERT_TRUE(s.ok()) << s.status();
  const std::string text = tok_->Decode(std::vector<int>(s->input_ids.begin(), s->input_ids.end()));
  // The official quirk: "<image>\n" lands in the SYSTEM message as plain text.
  EXPECT_THAT(text, ::testing::StartsWith("<|im_start|>system\n<image>\nBe terse.<|im_end|>\n<|im_start|>user\n<img>"));
  EXPECT_EQ(LabelText(*s), "Square.<|im_end|>");
}

TEST_F(GeneratedData, InternVL25SystemTurnWithoutUserPlaceholderIsAnError) {
  const std::string meta = WriteMeta(
      {{"sys",
        {Record({{"image", "square.bmp"},
                 {"conversations", Conv({{"system", "Be terse."}, {"human", "Shape?"}, {"gpt", "Square."}})}})},
        json::object()}});
  auto ds = OpenOrDie(meta, Options("internvl2_5"));
  ASSERT_NE(ds, nullptr);
  absl::StatusOr<Sample> s = ds->Get(0);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.status().message(), HasSubstr("sys:1: the human turns hold 0 \"<image>\" placeholders for 1"));
}

TEST_F(GeneratedData, LiteralSeparatorInAnswerMasksTheWholeSampleUnderHermes2) {
  // Record 7 of the fixtures: "<|im_end|>" inside an answer breaks
  // preprocess_mpt's turn split; the sample is kept with every label -100.
  const std::string meta = WriteMeta(
      {{"sep",
        {Record({{"conversations", Conv({{"human", "Which token?"}, {"gpt", "The token <|im_end|> ends it."}})}})},
        json::object()}});
  auto ds = OpenOrDie(meta, Options("Hermes-2"));
  ASSERT_NE(ds, nullptr);
  absl::StatusOr<Sample> s = ds->Get(0);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_TRUE(s->fully_masked);
  EXPECT_THAT(s->warning, HasSubstr("tokenization mismatch"));
  EXPECT_TRUE(std::all_of(s->labels.begin(), s->labels.end(), [](int64_t l) { return l == kIgnoreIndex; }));
}

TEST_F(GeneratedData, MultiTurnLabelsPerTemplate) {
  const std::string rec =
      Record({{"conversations", Conv({{"human", " One? "}, {"gpt", " Yes. "}, {"human", "Two?"}, {"gpt", "No."}})}});
  const std::string meta = WriteMeta({{"turns", {rec}, json::object()}});
  // Hermes-2 and internvl2_5 keep the answers' whitespace; internvl2_5
  // leaves each answer's trailing "\n" unlabelled.
  auto hermes = OpenOrDie(meta, Options("Hermes-2"));
  auto v25 = OpenOrDie(meta, Options("internvl2_5"));
  ASSERT_NE(hermes, nullptr);
  ASSERT_NE(v25, nullptr);
  auto a = hermes->Get(0), c = v25->Get(0);
  ASSERT_TRUE(a.ok() && c.ok()) << a.status() << c.status();
  EXPECT_EQ(LabelText(*a), " Yes. <|im_end|>No.<|im_end|>");
  EXPECT_EQ(LabelText(*c), " Yes. <|im_end|>No.<|im_end|>");
  // Every input token after the last label is unsupervised for internvl2_5
  // (the "\n"), and Hermes-2's last token is the labelled <|im_end|>.
  EXPECT_EQ(c->labels.back(), kIgnoreIndex);
  EXPECT_EQ(a->labels.back(), a->input_ids.back());
}

TEST_F(GeneratedData, TruncationCuttingImageTokensIsAnErrorAndTextIsTruncated) {
  const std::string meta = WriteMeta(
      {{"long",
        {Record({{"image", "wide.bmp"}, {"conversations", Conv({{"human", "<image>\nWhat?"}, {"gpt", "Stripes."}})}}),
         Record({{"conversations", Conv({{"human", "Hello there, how are you?"}, {"gpt", "Fine."}})}})},
        json::object()}});
  DataOptions o = Options("Hermes-2");
  o.max_seq_length = 40;
  auto ds = OpenOrDie(meta, o);
  ASSERT_NE(ds, nullptr);
  absl::StatusOr<Sample> img = ds->Get(0);
  ASSERT_FALSE(img.ok());
  EXPECT_THAT(img.status().message(), HasSubstr("0 images made it into the tokens for 1 image"));
  EXPECT_THAT(img.status().message(), HasSubstr("max_seq_length=40"));
  absl::StatusOr<Sample> text = ds->Get(1);
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(text->input_ids.size(), 40u);
  EXPECT_EQ(text->labels.size(), 40u);
  EXPECT_EQ(text->position_ids.size(), 40u);
}

TEST_F(GeneratedData, RepeatTimeSubsamplesAndRepeats) {
  std::vector<std::string> lines;
  for (int i = 0; i < 10; ++i) {
    lines.push_back(Record({{"conversations", Conv({{"human", absl::StrCat("Q", i)}, {"gpt", "A"}})}}));
  }
  const std::string half = WriteMeta({{"half", lines, {{"repeat_time", 0.5}}}});
  const std::string twice = WriteMeta({{"twice", lines, {{"repeat_time", 2}}}});
  const std::string one_half = WriteMeta({{"onehalf", lines, {{"repeat_time", 1.5}}}});
  const std::string none = WriteMeta({{"none", lines, {{"repeat_time", 0}}}, {"all", lines, json::object()}});

  auto sources = [](const SftDataset& ds) {
    std::vector<std::string> s;
    for (size_t i = 0; i < ds.size(); ++i) s.push_back(ds.SourceOf(i));
    return s;
  };
  DataOptions o = Options("Hermes-2");
  auto h1 = OpenOrDie(half, o);
  auto h1_again = OpenOrDie(half, o);
  o.seed = 7;
  auto h2 = OpenOrDie(half, o);
  ASSERT_NE(h1, nullptr);
  ASSERT_NE(h2, nullptr);
  ASSERT_EQ(h1->size(), 5u);
  const std::vector<std::string> s1 = sources(*h1);
  EXPECT_EQ(s1, sources(*h1_again)) << "same seed, same subsample";
  EXPECT_NE(s1, sources(*h2)) << "another seed, another subsample";
  EXPECT_EQ(std::set<std::string>(s1.begin(), s1.end()).size(), 5u) << "without replacement";
  for (size_t i = 0; i < h1->size(); ++i) EXPECT_TRUE(h1->Get(i).ok());

  auto t = OpenOrDie(twice, Options("Hermes-2"));
  ASSERT_NE(t, nullptr);
  ASSERT_EQ(t->size(), 20u);
  EXPECT_EQ(t->SourceOf(0), "twice:1");
  EXPECT_EQ(t->SourceOf(10), "twice:1");
  EXPECT_EQ(t->SourceOf(19), "twice:10");

  auto oh = OpenOrDie(one_half, Options("Hermes-2"));
  ASSERT_NE(oh, nullptr);
  EXPECT_EQ(oh->size(), 15u);

  auto n = OpenOrDie(none, Options("Hermes-2"));
  ASSERT_NE(n, nullptr);
  EXPECT_EQ(n->size(), 10u);
  EXPECT_EQ(n->SourceOf(0), "all:1");
}

TEST_F(GeneratedData, OpenRejectsUnknownTemplatesAndBadMeta) {
  const std::string meta =
      WriteMeta({{"d", {Record({{"conversations", Conv({{"human", "Hi"}, {"gpt", "Yo"}})}})}, json::object()}});
  auto bad = SftDataset::Open(meta, *tok_, Options("vicuna_v1.1"));
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("internvl2_5"));

  Write(dir_ + "/nometa.json", R"({"d": {"root": "media"}})");
  auto no_ann = LoadMeta(dir_ + "/nometa.json");
  ASSERT_FALSE(no_ann.ok());
  EXPECT_THAT(no_ann.status().message(), HasSubstr("\"annotation\""));

  Write(dir_ + "/gone.json", R"({"d": {"root": "media", "annotation": "gone.jsonl"}})");
  auto gone = LoadMeta(dir_ + "/gone.json");
  ASSERT_FALSE(gone.ok());
  EXPECT_EQ(gone.status().code(), absl::StatusCode::kNotFound);

  Write(dir_ + "/broken.json", "{\"d\": ");
  EXPECT_EQ(LoadMeta(dir_ + "/broken.json").status().code(), absl::StatusCode::kInvalidArgument);

  // Meta order is kept (not sorted by name) and paths resolve against the
  // meta file's folder.
  const std::string two =
      WriteMeta({{"zeta", {Record({{"conversations", Conv({{"human", "a"}, {"gpt", "b"}})}})}, json::object()},
                 {"alpha", {Record({{"conversations", Conv({{"human", "a"}, {"gpt", "b"}})}})}, json::object()}});
  auto specs = LoadMeta(two);
  ASSERT_TRUE(specs.ok()) << specs.status();
  ASSERT_EQ(specs->size(), 2u);
  EXPECT_EQ((*specs)[0].name, "zeta");
  EXPECT_EQ((*specs)[0].root, (fs::path(dir_) / "media").lexically_normal().string());
}

TEST_F(GeneratedData, DataAugmentIsNoticedAndTreatedAsOff) {
  const std::string rec =
      Record({{"image", "square.bmp"}, {"conversations", Conv({{"human", "<image>\nWhat?"}, {"gpt", "A."}})}});
  const std::string meta = WriteMeta({{"aug", {rec}, {{"data_augment", true}}}, {"plain", {rec}, json::object()}});
  auto ds = OpenOrDie(meta, Options("internvl2_5"));
  ASSERT_NE(ds, nullptr);
  ASSERT_EQ(ds->notices().size(), 1u);
  EXPECT_THAT(ds->notices()[0], HasSubstr("aug: data_augment is not implemented"));
  auto a = ds->Get(0), b = ds->Get(1);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->pixel_values.bytes, b->pixel_values.bytes);
}

TEST(Collate, PadsAndRecomputesTheMask) {
  Sample a, b;
  a.input_ids = {5, 0, 7};  // a real token with the pad id is masked too
  a.labels = {-100, -100, 7};
  a.position_ids = {0, 1, 2};
  a.image_flags = {1, 1};
  a.pixel_values = HostTensor(DType::kF32, {2, 3, 2, 2});
  for (int i = 0; i < 24; ++i) a.pixel_values.data<float>()[i] = static_cast<float>(i);
  b.input_ids = {9};
  b.labels = {9};
  b.position_ids = {0};
  b.image_flags = {0};
  b.pixel_values = HostTensor(DType::kF32, {1, 3, 2, 2});
  for (int i = 0; i < 12; ++i) b.pixel_values.data<float>()[i] = -1.0f;
  Batch batch = Collate({a, b});
  EXPECT_EQ(batch.batch_size, 2);
  EXPECT_EQ(batch.seq_len, 3);
  EXPECT_EQ(batch.input_ids, (std::vector<int64_t>{5, 0, 7, 9, 0, 0}));
  EXPECT_EQ(batch.labels, (std::vector<int64_t>{-100, -100, 7, 9, -100, -100}));
  EXPECT_EQ(batch.position_ids, (std::vector<int64_t>{0, 1, 2, 0, 0, 0}));
  EXPECT_EQ(batch.attention_mask, (std::vector<uint8_t>{1, 0, 1, 1, 0, 0}));
  EXPECT_EQ(batch.image_flags, (std::vector<int64_t>{1, 1, 0}));
  ASSERT_EQ(batch.pixel_values.shape, (std::vector<int64_t>{3, 3, 2, 2}));
  EXPECT_EQ(batch.pixel_values.data<float>()[23], 23.0f);
  EXPECT_EQ(batch.pixel_values.data<float>()[24], -1.0f);
}

TEST(PythonStrings, SplitAndStripBehaveAsPython) {
  EXPECT_EQ(PySplit("a<s>b<s>", "<s>"), (std::vector<std::string>{"a", "b", ""}));
  EXPECT_EQ(PySplit("", "<s>"), (std::vector<std::string>{""}));
  EXPECT_EQ(PySplit("abc", "x"), (std::vector<std::string>{"abc"}));
  EXPECT_EQ(PyStrip(" \t\n x y \r\n"), "x y");
  EXPECT_EQ(PyStrip("\xE3\x80\x80wide\xC2\xA0"), "wide");  // U+3000, U+00A0 are str.isspace()
  EXPECT_EQ(PyStrip("\xE4\xBD\xA0"), "\xE4\xBD\xA0");      // not whitespace
  EXPECT_EQ(PyStrip("   "), "");
  std::string s = "<image> and <image>";
  EXPECT_TRUE(ReplaceFirst(&s, "<image>", "X"));
  EXPECT_EQ(s, "X and <image>");
  EXPECT_FALSE(ReplaceFirst(&s, "<video>", "Y"));
}

// ---------------------------------------------------------------------------
// Parity with the official pipeline (../shared/fixtures/training)

struct ParityCase {
  const char* config;
  const char* model;  // fixture folder holding the tokenizer
  const char* conv_style;
  const char* meta;
};

class TrainingDataParity : public ::testing::TestWithParam<ParityCase> {};

TEST_P(TrainingDataParity, SamplesAndBatchesMatchTheReference) {
  INTERNVL_REQUIRE_FIXTURES(fixtures);
  const ParityCase& pc = GetParam();
  const std::string root = fixtures + "/training";
  const std::string cfg = root + "/" + pc.config;
  auto tok = tokenizer::Tokenizer::Load(fixtures + "/" + pc.model);
  ASSERT_TRUE(tok.ok()) << tok.status();
  std::ifstream pj(cfg + "/preprocess.json");
  const json ref = json::parse(pj);
  auto pre = SafetensorsFile::Open(cfg + "/preprocess.safetensors");
  ASSERT_TRUE(pre.ok()) << pre.status();
  auto train = SafetensorsFile::Open(cfg + "/train.safetensors");
  ASSERT_TRUE(train.ok()) << train.status();

  DataOptions o;
  o.conv_style = pc.conv_style;
  ASSERT_EQ(ref["conv_style"], pc.conv_style);
  o.max_dynamic_patch = ref["max_dynamic_patch"].get<int>();
  o.max_seq_length = ref["max_seq_length"].get<int>();
  o.num_image_token = ref["num_image_token"].get<int>();
  auto ds = SftDataset::Open(root + "/dataset/" + pc.meta, **tok, o);
  ASSERT_TRUE(ds.ok()) << ds.status();
  ASSERT_EQ((*ds)->size(), ref["samples"].size());

  std::vector<Sample> samples;
  std::set<size_t> fully_masked, expected_fully_masked;
  double worst_sum_rel = 0, worst_row = 0;
  for (size_t i = 0; i < (*ds)->size(); ++i) {
    SCOPED_TRACE(absl::StrCat(pc.config, " sample ", i));
    absl::StatusOr<Sample> s = (*ds)->Get(i);
    ASSERT_TRUE(s.ok()) << s.status();
    const std::string p = absl::StrCat("s", i, "_");
    const auto ids = TensorOrDie<int64_t>(**pre, p + "input_ids", DType::kI64);
    const auto labels = TensorOrDie<int64_t>(**pre, p + "labels", DType::kI64);
    const auto mask = TensorOrDie<uint8_t>(**pre, p + "attention_mask", DType::kU8);
    const auto pos = TensorOrDie<int64_t>(**pre, p + "position_ids", DType::kI64);
    const auto flags = TensorOrDie<int64_t>(**pre, p + "image_flags", DType::kI64);
    EXPECT_EQ(s->input_ids, ids) << FirstDiff(s->input_ids, ids);
    EXPECT_EQ(s->labels, labels) << FirstDiff(s->labels, labels);
    EXPECT_EQ(s->attention_mask, mask) << FirstDiff(s->attention_mask, mask);
    EXPECT_EQ(s->position_ids, pos) << FirstDiff(s->position_ids, pos);
    EXPECT_EQ(s->image_flags, flags);
    const json& rs = ref["samples"][i];
    EXPECT_EQ(static_cast<int64_t>(s->input_ids.size()), rs["seq_len"].get<int64_t>());
    if (s->fully_masked) fully_masked.insert(i);
    if (rs["num_unmasked_labels"].get<int>() == 0) expected_fully_masked.insert(i);

    // Pixels: per-tile per-channel float64 sums, and tile 0's first row.
    const auto sums = TensorOrDie<float>(**pre, p + "pixel_values_tile_sum", DType::kF32);
    const auto row0 = TensorOrDie<float>(**pre, p + "pixel_values_tile0_row0", DType::kF32);
    const int64_t tiles = static_cast<int64_t>(flags.size());
    const int64_t side = o.image_size;
    ASSERT_EQ(s->pixel_values.shape, (std::vector<int64_t>{tiles, 3, side, side}));
    ASSERT_EQ(sums.size(), static_cast<size_t>(tiles * 3));
    const float* px = s->pixel_values.data<float>();
    for (int64_t t = 0; t < tiles; ++t) {
      for (int c = 0; c < 3; ++c) {
        const float* plane = px + (t * 3 + c) * side * side;
        double sum = 0;
        for (int64_t k = 0; k < side * side; ++k) sum += plane[k];
        const double want = sums[t * 3 + c];
        const double rel = std::abs(sum - want) / std::max(1.0, std::abs(want));
        worst_sum_rel = std::max(worst_sum_rel, rel);
        EXPECT_LE(rel, 1e-3) << "tile " << t << " channel " << c << ": " << sum << " vs " << want;
      }
    }
    ASSERT_EQ(row0.size(), static_cast<size_t>(3 * side));
    for (int c = 0; c < 3; ++c) {
      for (int64_t x = 0; x < side; ++x) {
        const double d = std::abs(px[c * side * side + x] - row0[c * side + x]);
        worst_row = std::max(worst_row, d);
        EXPECT_LE(d, 1e-6) << "channel " << c << " x " << x;
      }
    }
    samples.push_back(std::move(*s));
  }
  EXPECT_EQ(fully_masked, expected_fully_masked);
  if (std::string(pc.config) == "qwen2_Hermes-2") {
    EXPECT_EQ(fully_masked, std::set<size_t>{7});
  }
  std::cout << pc.config << ": " << samples.size() << " samples; pixel tile sums worst relative error " << worst_sum_rel
            << ", tile 0 row 0 worst abs error " << worst_row << "\n";

  // The collated batches of the reference run: [0, 1], [2, 3], [4, 5], [6, 7].
  for (int step = 1; step <= 4; ++step) {
    SCOPED_TRACE(absl::StrCat(pc.config, " step ", step));
    const Batch b = Collate({samples[2 * (step - 1)], samples[2 * (step - 1) + 1]});
    const std::string p = absl::StrCat("step", step, "/batch_");
    const TensorView* v = (*train)->Find(p + "input_ids");
    ASSERT_NE(v, nullptr);
    EXPECT_EQ(v->shape, (std::vector<int64_t>{b.batch_size, b.seq_len}));
    const auto ids = TensorOrDie<int64_t>(**train, p + "input_ids", DType::kI64);
    const auto labels = TensorOrDie<int64_t>(**train, p + "labels", DType::kI64);
    const auto mask = TensorOrDie<uint8_t>(**train, p + "attention_mask", DType::kU8);
    const auto pos = TensorOrDie<int64_t>(**train, p + "position_ids", DType::kI64);
    const auto flags = TensorOrDie<int64_t>(**train, p + "image_flags", DType::kI64);
    EXPECT_EQ(b.input_ids, ids) << FirstDiff(b.input_ids, ids);
    EXPECT_EQ(b.labels, labels) << FirstDiff(b.labels, labels);
    EXPECT_EQ(b.attention_mask, mask) << FirstDiff(b.attention_mask, mask);
    EXPECT_EQ(b.position_ids, pos) << FirstDiff(b.position_ids, pos);
    EXPECT_EQ(b.image_flags, flags);
    EXPECT_EQ(b.pixel_values.shape[0], static_cast<int64_t>(flags.size()));
  }
}

INSTANTIATE_TEST_SUITE_P(
    Configs, TrainingDataParity,
    ::testing::Values(ParityCase{"qwen2_Hermes-2", "tiny-qwen2", "Hermes-2", "meta_common.json"},
                      ParityCase{"internlm2_internlm2-chat", "tiny-internlm2", "internlm2-chat", "meta_common.json"},
                      ParityCase{"qwen2_internvl2_5", "tiny-qwen2", "internvl2_5", "meta_internvl2_5.json"}),
    [](const ::testing::TestParamInfo<ParityCase>& info) {
      std::string name = info.param.config;
      std::replace(name.begin(), name.end(), '-', '_');
      return name;
    });

// internvl2_5 over a BOS-adding tokenizer (InternVL2_5-2B/8B pair the
// template with InternLM2's): the official `add_bos_token` branch puts one
// BOS in front of the first message and drops every message's own BOS. No
// reference run covers this pairing; the structure is checked.
TEST(TrainingDataBos, InternVL25WithInternLM2TokenizerHasOneLeadingBos) {
  INTERNVL_REQUIRE_FIXTURES(fixtures);
  auto tok = tokenizer::Tokenizer::Load(fixtures + "/tiny-internlm2");
  ASSERT_TRUE(tok.ok()) << tok.status();
  DataOptions o;
  o.conv_style = "internvl2_5";
  o.max_dynamic_patch = 4;
  auto ds = SftDataset::Open(fixtures + "/training/dataset/meta_internvl2_5.json", **tok, o);
  ASSERT_TRUE(ds.ok()) << ds.status();
  const int bos = *(*tok)->bos_token_id();
  const int im_start = *(*tok)->TokenToId("<|im_start|>");
  const int im_end = *(*tok)->TokenToId("<|im_end|>");
  for (size_t i = 0; i < (*ds)->size(); ++i) {
    SCOPED_TRACE(i);
    absl::StatusOr<Sample> s = (*ds)->Get(i);
    ASSERT_TRUE(s.ok()) << s.status();
    ASSERT_GE(s->input_ids.size(), 2u);
    EXPECT_EQ(s->input_ids[0], bos);
    EXPECT_EQ(s->input_ids[1], im_start);
    EXPECT_EQ(std::count(s->input_ids.begin(), s->input_ids.end(), bos), 1);
    EXPECT_EQ(s->labels[0], kIgnoreIndex);
    EXPECT_EQ(s->labels.back(), kIgnoreIndex);  // the trailing "\n"
    ASSERT_GE(s->labels.size(), 2u);
    EXPECT_EQ(s->labels[s->labels.size() - 2], im_end);
  }
}

// A video record: frames decoded by core/video (get_index, one tile each),
// "Frame-i: <image>" lines replacing "<video>\n" in the first message.
TEST(TrainingDataVideo, FramesBecomeOneTileEachWithFrameLines) {
  INTERNVL_REQUIRE_FIXTURES(fixtures);
  const std::string dir = testing::TempDir();
  fs::copy_file(fixtures + "/inputs/video.mp4", dir + "/video.mp4");
  json rec = {{"video", "video.mp4"}, {"conversations", Conv({{"human", "What moves?"}, {"gpt", "A ball."}})}};
  Write(dir + "/v.jsonl", rec.dump() + "\n");
  Write(dir + "/meta.json",
        R"({"vid": {"root": ".", "annotation": "v.jsonl", "data_augment": false, "repeat_time": 1}})");
  auto tok = tokenizer::Tokenizer::Load(fixtures + "/tiny-qwen2");
  ASSERT_TRUE(tok.ok()) << tok.status();
  DataOptions o;
  o.conv_style = "internvl2_5";
  o.num_video_frames = 8;
  auto ds = SftDataset::Open(dir + "/meta.json", **tok, o);
  ASSERT_TRUE(ds.ok()) << ds.status();
  absl::StatusOr<Sample> s = (*ds)->Get(0);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->image_flags, std::vector<int64_t>(8, 1));
  const int end = *(*tok)->TokenToId(tokenizer::kImgEndToken);
  EXPECT_EQ(std::count(s->input_ids.begin(), s->input_ids.end(), end), 8);
  const std::string text = (*tok)->Decode(std::vector<int>(s->input_ids.begin(), s->input_ids.end()));
  EXPECT_THAT(text, HasSubstr("<|im_start|>user\nFrame-1: <img><IMG_CONTEXT>"));
  EXPECT_THAT(text, HasSubstr("</img>\nFrame-2: <img>"));
  EXPECT_THAT(text, HasSubstr("</img>\nWhat moves?<|im_end|>"));
  // The same frames and tiles as load_video(num_segments=8, max_num=1).
  auto check = SafetensorsFile::Open(fixtures + "/inputs/video_seg8_check.safetensors");
  ASSERT_TRUE(check.ok()) << check.status();
  const auto sums = TensorOrDie<float>(**check, "pixel_values_tile_sum", DType::kF32);
  ASSERT_EQ(sums.size(), 8u);
  const int64_t n = int64_t{3} * o.image_size * o.image_size;
  for (int t = 0; t < 8; ++t) {
    double sum = 0;
    for (int64_t k = 0; k < n; ++k) sum += s->pixel_values.data<float>()[t * n + k];
    EXPECT_NEAR(sum, sums[t], 1e-3 * std::max(1.0, std::abs(static_cast<double>(sums[t])))) << "frame " << t;
  }
}

}  // namespace
}  // namespace internvl::train
