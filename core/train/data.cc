#include "core/train/data.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <random>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "core/config.h"
#include "core/files.h"
#include "core/preprocess/image.h"
#include "core/preprocess/tiling.h"
#include "core/status.h"
#include "core/tokenizer/chat_template.h"
#include "core/train/data_preprocess.h"
#include "nlohmann/json.hpp"

#ifdef INTERNVL_HAVE_VIDEO
#include "core/video/video.h"
#endif

namespace internvl::train {
namespace {

namespace fs = std::filesystem;
using nlohmann::ordered_json;

// pure_text_get_item's blank image: Image.new('RGB', (224, 224), (255, 255, 255)).
constexpr int kDummyImageSide = 224;
constexpr uint8_t kDummyImageValue = 255;
// Most records (annotation lines x repeat_time, all datasets) one dataset may
// index: 8 bytes each, so 512 MiB. The largest public SFT mixtures have
// ~16M samples; a meta past this (e.g. repeat_time 1e6 on a big file) is
// refused instead of filling memory before the first step.
constexpr uint64_t kMaxRecords = uint64_t{1} << 26;

std::string ResolveAgainst(const fs::path& base, const std::string& p) {
  fs::path path(p);
  if (path.is_relative()) path = base / path;
  return path.lexically_normal().string();
}

// OK when `path` (symlinks resolved) lies inside `root` (or `root` is
// empty).
absl::Status CheckWithin(const std::string& path, const std::string& root, absl::string_view what) {
  if (root.empty()) return absl::OkStatus();
  std::error_code ec1, ec2;
  const fs::path p = fs::weakly_canonical(path, ec1);
  const fs::path r = fs::weakly_canonical(root, ec2);
  if (!ec1 && !ec2) {
    auto pi = p.begin();
    bool inside = true;
    for (auto ri = r.begin(); ri != r.end(); ++ri, ++pi) {
      if (ri->empty()) continue;  // a trailing separator
      if (pi == p.end() || *pi != *ri) {
        inside = false;
        break;
      }
    }
    if (inside) return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat(what, " '", path, "' lies outside the data root ", root));
}

// os.path.join(root, path): an absolute `path` wins.
std::string JoinMediaPath(const std::string& root, const std::string& path) {
  return ResolveAgainst(fs::path(root), path);
}

// An unbiased draw in [0, n) from the standard-defined mt19937_64 sequence
// (std::uniform_int_distribution's algorithm is implementation-defined).
uint64_t Below(std::mt19937_64& rng, uint64_t n) {
  const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
  uint64_t x;
  do {
    x = rng();
  } while (x >= limit);
  return x % n;
}

// k distinct line indices out of n, drawn by a partial Fisher-Yates shuffle,
// returned in file order.
std::vector<uint32_t> SampleLines(uint32_t n, uint32_t k, std::mt19937_64& rng) {
  std::vector<uint32_t> idx(n);
  for (uint32_t i = 0; i < n; ++i) idx[i] = i;
  k = std::min(k, n);
  for (uint32_t i = 0; i < k; ++i) std::swap(idx[i], idx[i + Below(rng, n - i)]);
  idx.resize(k);
  std::sort(idx.begin(), idx.end());
  return idx;
}

uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

struct Annotation {
  DatasetSpec spec;
  int max_dynamic_patch = 0;  // the spec's override or DataOptions'
  std::string text;
  std::vector<absl::string_view> lines;  // into text, f.readlines() without the '\n'
};

struct RecordRef {
  uint32_t dataset;
  uint32_t line;  // 0-based
};

// A record's media, as LazySupervisedDataset.__getitem__ dispatches on it.
enum class Kind { kSingleImage, kMultiImage, kVideo, kText };

class SftDatasetImpl : public SftDataset {
 public:
  SftDatasetImpl(const tokenizer::Tokenizer& tok, DataOptions options, const tokenizer::ChatTemplate* chat_template,
                 PreprocessStyle style, int img_end_id)
      : tok_(tok), options_(std::move(options)), template_(chat_template), style_(style), img_end_id_(img_end_id) {}

  absl::Status Load(const std::string& meta_path);

  size_t size() const override { return records_.size(); }
  absl::StatusOr<Sample> Get(size_t index) const override;
  std::string SourceOf(size_t index) const override {
    if (index >= records_.size()) return absl::StrCat("<index ", index, " out of range>");
    const RecordRef& r = records_[index];
    return absl::StrCat(annotations_[r.dataset].spec.name, ":", r.line + 1);
  }
  std::vector<std::string> notices() const override { return notices_; }

 private:
  absl::StatusOr<Sample> Build(const Annotation& ann, absl::string_view line) const;
  absl::StatusOr<preprocess::Tiles> LoadImage(const Annotation& ann, const std::string& rel_path, int max_num) const;
  absl::Status Finish(const std::vector<Message>& messages, std::vector<int64_t> num_image_tokens, bool text_only,
                      Sample* sample) const;
  void SetPixels(const std::vector<const preprocess::Tiles*>& tiles, Sample* sample) const;

  const tokenizer::Tokenizer& tok_;
  const DataOptions options_;
  const tokenizer::ChatTemplate* template_;
  const PreprocessStyle style_;
  const int img_end_id_;
  std::vector<Annotation> annotations_;
  std::vector<RecordRef> records_;
  std::vector<std::string> notices_;
};

absl::Status SftDatasetImpl::Load(const std::string& meta_path) {
  INTERNVL_ASSIGN_OR_RETURN(std::vector<DatasetSpec> specs, LoadMeta(meta_path));
  // Built in place, never moved: `lines` point into `text`, and a moved
  // std::string keeps a short text inline, which would leave them dangling.
  // The reserve keeps the vector from moving its elements.
  annotations_.reserve(specs.size());
  for (size_t d = 0; d < specs.size(); ++d) {
    Annotation& ann = annotations_.emplace_back();
    ann.spec = std::move(specs[d]);
    ann.max_dynamic_patch = ann.spec.max_dynamic_patch.value_or(options_.max_dynamic_patch);
    if (ann.spec.data_augment) {
      std::string notice = absl::StrCat(
          "dataset ", ann.spec.name,
          ": data_augment is not implemented (the official random JPEG re-encoding of build_transform(is_train="
          "True)); its images get the is_train=False transform");
      std::cerr << "warning: " << notice << "\n";
      notices_.push_back(std::move(notice));
    }
    INTERNVL_RETURN_IF_ERROR(CheckWithin(ann.spec.annotation, options_.data_root, "annotation"));
    INTERNVL_ASSIGN_OR_RETURN(ann.text, ReadFile(ann.spec.annotation));
    // f.readlines(): a final line without '\n' still counts, a file ending in
    // '\n' has no empty last line.
    size_t pos = 0;
    while (pos < ann.text.size()) {
      size_t nl = ann.text.find('\n', pos);
      if (nl == std::string::npos) nl = ann.text.size();
      ann.lines.push_back(absl::string_view(ann.text).substr(pos, nl - pos));
      pos = nl + 1;
    }
    if (ann.lines.size() > UINT32_MAX) {
      return absl::InvalidArgumentError(absl::StrCat(ann.spec.annotation, ": too many lines"));
    }
    const uint32_t n = static_cast<uint32_t>(ann.lines.size());
    const double r = ann.spec.repeat_time;
    std::mt19937_64 rng(SplitMix64(options_.seed ^ SplitMix64(d + 1)));
    auto add = [&](uint32_t line) { records_.push_back({static_cast<uint32_t>(d), line}); };
    const double whole = std::floor(r);
    const uint32_t extra = static_cast<uint32_t>(std::floor(static_cast<double>(n) * (r - whole)));
    if (static_cast<double>(records_.size()) + whole * n + extra > static_cast<double>(kMaxRecords)) {
      return absl::InvalidArgumentError(absl::StrCat(
          ann.spec.annotation, ": ", n, " lines x repeat_time ", r, " would make the dataset more than ", kMaxRecords,
          " records"));
    }
    for (int64_t rep = 0; rep < static_cast<int64_t>(whole); ++rep) {
      for (uint32_t i = 0; i < n; ++i) add(i);
    }
    // int(len * fraction) more lines drawn without replacement (all of the
    // subsample when repeat_time < 1).
    if (extra > 0) {
      for (uint32_t i : SampleLines(n, extra, rng)) add(i);
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<Sample> SftDatasetImpl::Get(size_t index) const {
  if (index >= records_.size()) {
    return absl::OutOfRangeError(absl::StrCat("sample ", index, " of a dataset of ", records_.size()));
  }
  const RecordRef& ref = records_[index];
  const Annotation& ann = annotations_[ref.dataset];
  const std::string source = SourceOf(index);
  absl::StatusOr<Sample> sample = Build(ann, ann.lines[ref.line]);
  if (!sample.ok()) {
    return absl::Status(sample.status().code(), absl::StrCat(source, ": ", sample.status().message()));
  }
  sample->source = source;
  return sample;
}

absl::StatusOr<std::vector<Message>> ParseConversations(const ordered_json& item) {
  const auto it = item.find("conversations");
  if (it == item.end()) return absl::InvalidArgumentError("the record has no \"conversations\"");
  if (!it->is_array()) return absl::InvalidArgumentError("\"conversations\" is not a list");
  std::vector<Message> messages;
  for (size_t i = 0; i < it->size(); ++i) {
    const ordered_json& m = (*it)[i];
    if (!m.is_object() || !m.contains("from") || !m.contains("value") || !m["from"].is_string() ||
        !m["value"].is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat("conversations[", i, "] is not {\"from\": string, \"value\": string}"));
    }
    messages.push_back({m["from"].get<std::string>(), m["value"].get<std::string>()});
  }
  if (messages.empty()) return absl::InvalidArgumentError("\"conversations\" is empty");
  return messages;
}

absl::StatusOr<preprocess::Tiles> SftDatasetImpl::LoadImage(const Annotation& ann, const std::string& rel_path,
                                                            int max_num) const {
  if (absl::StartsWith(rel_path, "s3://")) {
    return absl::InvalidArgumentError(absl::StrCat("image ", rel_path, ": s3:// paths are not supported"));
  }
  const std::string path = JoinMediaPath(ann.spec.root, rel_path);
  INTERNVL_RETURN_IF_ERROR(CheckWithin(path, options_.data_root, "image"));
  absl::StatusOr<std::string> bytes = ReadFile(path);
  if (!bytes.ok()) return Annotate(bytes.status(), absl::StrCat("image ", path));
  preprocess::TilingOptions tiling;
  tiling.min_num = options_.dynamic_image_size ? options_.min_dynamic_patch : 1;
  tiling.max_num = options_.dynamic_image_size ? max_num : 1;  // else one image, T.Resize((S, S))
  // No grid satisfies min_num <= n <= max_num: the official
  // find_closest_aspect_ratio falls back to (1, 1).
  if (tiling.min_num > tiling.max_num) tiling.min_num = tiling.max_num = 1;
  tiling.image_size = options_.image_size;
  tiling.use_thumbnail = options_.use_thumbnail;
  absl::StatusOr<preprocess::Tiles> tiles = preprocess::LoadImageTiles(*bytes, tiling);
  if (!tiles.ok()) return Annotate(tiles.status(), absl::StrCat("image ", path));
  return tiles;
}

void SftDatasetImpl::SetPixels(const std::vector<const preprocess::Tiles*>& all, Sample* sample) const {
  int64_t count = 0;
  for (const preprocess::Tiles* t : all) count += t->count;
  const int64_t s = options_.image_size;
  sample->pixel_values = HostTensor(DType::kF32, {count, preprocess::kRgbChannels, s, s});
  float* out = sample->pixel_values.data<float>();
  for (const preprocess::Tiles* t : all) {
    preprocess::NormalizeTiles(*t, out);
    out += static_cast<int64_t>(t->count) * preprocess::kRgbChannels * s * s;
  }
}

absl::Status SftDatasetImpl::Finish(const std::vector<Message>& messages, std::vector<int64_t> num_image_tokens,
                                    bool text_only, Sample* sample) const {
  PreprocessRequest request;
  request.messages = messages;
  request.num_image_tokens = std::move(num_image_tokens);
  request.text_only = text_only;
  request.max_seq_length = options_.max_seq_length;
  INTERNVL_ASSIGN_OR_RETURN(TokenizedConversation conv, PreprocessConversation(style_, *template_, tok_, request));
  sample->input_ids = std::move(conv.input_ids);
  sample->labels = std::move(conv.labels);
  sample->fully_masked = conv.fully_masked;
  sample->warning = std::move(conv.warning);
  // attention_mask = input_ids.ne(pad_token_id);
  // position_ids = cumsum(mask) - 1, masked_fill(mask == 0, 1).
  const std::optional<int> pad = tok_.pad_token_id();
  const size_t n = sample->input_ids.size();
  sample->attention_mask.resize(n);
  sample->position_ids.resize(n);
  int64_t cum = 0;
  for (size_t i = 0; i < n; ++i) {
    const bool on = !pad || sample->input_ids[i] != *pad;
    sample->attention_mask[i] = on ? 1 : 0;
    cum += on ? 1 : 0;
    sample->position_ids[i] = on ? cum - 1 : 1;
  }
  return absl::OkStatus();
}

absl::StatusOr<Sample> SftDatasetImpl::Build(const Annotation& ann, absl::string_view line) const {
  ordered_json item;
  try {
    item = ordered_json::parse(line);
  } catch (const ordered_json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("malformed JSON line: ", e.what()));
  }
  if (!item.is_object()) return absl::InvalidArgumentError("the line is not a JSON object");
  INTERNVL_ASSIGN_OR_RETURN(std::vector<Message> messages, ParseConversations(item));

  // __getitem__'s dispatch: 'image' present and non-empty (a list -> multi
  // image, else single), else a non-empty 'video', else pure text.
  Kind kind = Kind::kText;
  if (item.contains("image")) {
    const ordered_json& image = item["image"];
    if (image.is_string()) {
      if (!image.get<std::string>().empty()) kind = Kind::kSingleImage;
    } else if (image.is_array()) {
      if (!image.empty()) kind = Kind::kMultiImage;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("\"image\" must be a path or a list of paths, not ", image.type_name()));
    }
  }
  if (kind == Kind::kText && item.contains("video") && !item["video"].is_null()) {
    if (!item["video"].is_string()) return absl::InvalidArgumentError("\"video\" must be a path");
    if (!item["video"].get<std::string>().empty()) kind = Kind::kVideo;
  }

  Sample sample;
  const int64_t per_tile = options_.num_image_token;
  switch (kind) {
    case Kind::kSingleImage: {  // multi_modal_get_item
      if (!absl::StrContains(messages[0].value, tokenizer::kImagePlaceholder)) {
        messages[0].value = absl::StrCat(tokenizer::kImagePlaceholder, "\n", messages[0].value);
      }
      INTERNVL_ASSIGN_OR_RETURN(preprocess::Tiles tiles,
                                LoadImage(ann, item["image"].get<std::string>(), ann.max_dynamic_patch));
      INTERNVL_RETURN_IF_ERROR(Finish(messages, {per_tile * tiles.count}, false, &sample));
      SetPixels({&tiles}, &sample);
      sample.image_flags.assign(tiles.count, 1);
      break;
    }
    case Kind::kMultiImage: {  // multi_modal_multi_image_get_item
      const ordered_json& list = item["image"];
      // Each image takes at least one tile of tokens: a record that cannot
      // fit max_seq_length is refused before any image is read (the official
      // code would load them all, then fail its tokens assertion).
      if (static_cast<int64_t>(list.size()) * per_tile > options_.max_seq_length)
        return absl::InvalidArgumentError(absl::StrCat(list.size(), " images need at least ", list.size() * per_tile,
                                                       " tokens, over max_seq_length ", options_.max_seq_length));
      const int num_image = static_cast<int>(list.size());
      const int max_num = std::max(1, ann.max_dynamic_patch / num_image);
      std::vector<preprocess::Tiles> tiles;
      std::vector<int64_t> num_image_tokens;
      for (int i = 0; i < num_image; ++i) {
        if (!list[i].is_string()) return absl::InvalidArgumentError(absl::StrCat("image[", i, "] is not a path"));
        INTERNVL_ASSIGN_OR_RETURN(preprocess::Tiles t, LoadImage(ann, list[i].get<std::string>(), max_num));
        num_image_tokens.push_back(per_tile * t.count);
        tiles.push_back(std::move(t));
      }
      INTERNVL_RETURN_IF_ERROR(Finish(messages, num_image_tokens, false, &sample));
      std::vector<const preprocess::Tiles*> ptrs;
      int64_t count = 0;
      for (const preprocess::Tiles& t : tiles) {
        ptrs.push_back(&t);
        count += t.count;
      }
      SetPixels(ptrs, &sample);
      sample.image_flags.assign(count, 1);
      break;
    }
    case Kind::kVideo: {  // video_get_item
#ifdef INTERNVL_HAVE_VIDEO
      if (!absl::StrContains(messages[0].value, kVideoPlaceholder)) {
        messages[0].value = absl::StrCat(kVideoPlaceholder, "\n", messages[0].value);
      }
      const std::string path = JoinMediaPath(ann.spec.root, item["video"].get<std::string>());
      INTERNVL_RETURN_IF_ERROR(CheckWithin(path, options_.data_root, "video"));
      video::VideoOptions vopts;
      vopts.num_segments = options_.num_video_frames;
      vopts.max_num = 1;  // transform(frame): one Resize((S, S)) tile per frame
      vopts.image_size = options_.image_size;
      absl::StatusOr<video::VideoFrames> frames = video::LoadVideoFramesFromFile(path, vopts);
      if (!frames.ok()) return Annotate(frames.status(), absl::StrCat("video ", path));
      const int num_frames = frames->tiles.count;
      // special_tokens = '\n'.join('Frame-{i}: <image>'), replacing every
      // '<video>\n' of the first message.
      std::vector<std::string> lines;
      for (int i = 1; i <= num_frames; ++i)
        lines.push_back(absl::StrCat("Frame-", i, ": ", tokenizer::kImagePlaceholder));
      messages[0].value = absl::StrReplaceAll(
          messages[0].value, {{absl::StrCat(kVideoPlaceholder, "\n"), absl::StrCat(absl::StrJoin(lines, "\n"), "\n")}});
      INTERNVL_RETURN_IF_ERROR(Finish(messages, std::vector<int64_t>(num_frames, per_tile), false, &sample));
      SetPixels({&frames->tiles}, &sample);
      sample.image_flags.assign(num_frames, 1);
      break;
#else
      return absl::UnimplementedError("video records need internvl_video, which this build does not have");
#endif
    }
    case Kind::kText: {  // pure_text_get_item
      preprocess::RgbImage white;
      white.width = white.height = kDummyImageSide;
      white.data.assign(static_cast<size_t>(kDummyImageSide) * kDummyImageSide * preprocess::kRgbChannels,
                        kDummyImageValue);
      preprocess::TilingOptions tiling;
      tiling.min_num = options_.min_dynamic_patch;
      tiling.max_num = 1;
      tiling.image_size = options_.image_size;
      tiling.use_thumbnail = options_.use_thumbnail;
      INTERNVL_ASSIGN_OR_RETURN(preprocess::Tiles tiles, preprocess::DynamicPreprocess(white, tiling));
      INTERNVL_RETURN_IF_ERROR(Finish(messages, {per_tile * tiles.count}, true, &sample));
      SetPixels({&tiles}, &sample);
      sample.image_flags.assign(tiles.count, 0);
      break;
    }
  }

  // multi_modal_get_item / _multi_image_: exactly one </img> per image must
  // survive (a missing placeholder or truncation at max_seq_length fails).
  if (kind == Kind::kSingleImage || kind == Kind::kMultiImage) {
    const int64_t expected = kind == Kind::kSingleImage ? 1 : static_cast<int64_t>(item["image"].size());
    const int64_t found = std::count(sample.input_ids.begin(), sample.input_ids.end(), img_end_id_);
    if (found != expected) {
      return absl::InvalidArgumentError(
          absl::StrCat(found, " images made it into the tokens for ", expected, expected == 1 ? " image" : " images",
                       " (each image needs an \"<image>\" placeholder in the conversation, and max_seq_length=",
                       options_.max_seq_length, " must not cut the image tokens; the official code asserts this)"));
    }
  }
  return sample;
}

}  // namespace

absl::StatusOr<std::vector<DatasetSpec>> LoadMeta(const std::string& meta_path) {
  INTERNVL_ASSIGN_OR_RETURN(const std::string text, ReadFile(meta_path));
  ordered_json meta;
  try {
    meta = ordered_json::parse(text);
  } catch (const ordered_json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(meta_path, ": malformed JSON: ", e.what()));
  }
  if (!meta.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(meta_path, ": expected {name: {root, annotation, ...}, ...}"));
  }
  const fs::path base = fs::path(meta_path).parent_path();
  std::vector<DatasetSpec> specs;
  for (const auto& [name, entry] : meta.items()) {
    const std::string where = absl::StrCat(meta_path, ": dataset \"", name, "\"");
    if (!entry.is_object()) return absl::InvalidArgumentError(absl::StrCat(where, " is not an object"));
    DatasetSpec spec;
    spec.name = name;
    for (const char* key : {"root", "annotation"}) {
      if (!entry.contains(key) || !entry[key].is_string()) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": missing string field \"", key, "\""));
      }
    }
    spec.root = ResolveAgainst(base, entry["root"].get<std::string>());
    spec.annotation = ResolveAgainst(base, entry["annotation"].get<std::string>());
    if (!absl::EndsWith(spec.annotation, "jsonl")) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": annotation must be a .jsonl file, got ", spec.annotation));
    }
    if (entry.contains("data_augment")) {
      if (!entry["data_augment"].is_boolean()) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": \"data_augment\" must be true or false"));
      }
      spec.data_augment = entry["data_augment"].get<bool>();
    }
    if (entry.contains("repeat_time")) {
      if (!entry["repeat_time"].is_number()) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": \"repeat_time\" must be a number"));
      }
      spec.repeat_time = entry["repeat_time"].get<double>();
      if (!std::isfinite(spec.repeat_time) || spec.repeat_time < 0 || spec.repeat_time > 1e6) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": \"repeat_time\" must be in [0, 1e6], got ", spec.repeat_time));
      }
    }
    if (entry.contains("max_dynamic_patch") && !entry["max_dynamic_patch"].is_null()) {
      if (!entry["max_dynamic_patch"].is_number_integer() || entry["max_dynamic_patch"].get<int64_t>() < 1 ||
          entry["max_dynamic_patch"].get<int64_t>() > 1024) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": \"max_dynamic_patch\" must be an integer >= 1"));
      }
      spec.max_dynamic_patch = entry["max_dynamic_patch"].get<int>();
    }
    if (entry.contains("length") && entry["length"].is_number_integer()) {
      spec.length = entry["length"].get<int64_t>();
    }
    std::error_code ec;
    if (!fs::is_regular_file(spec.annotation, ec)) {
      return absl::NotFoundError(absl::StrCat(where, ": annotation file ", spec.annotation, " not found"));
    }
    specs.push_back(std::move(spec));
  }
  if (specs.empty()) return absl::InvalidArgumentError(absl::StrCat(meta_path, ": no datasets"));
  return specs;
}

absl::StatusOr<std::unique_ptr<SftDataset>> SftDataset::Open(const std::string& meta_path,
                                                             const tokenizer::Tokenizer& tokenizer,
                                                             const DataOptions& options) {
  INTERNVL_ASSIGN_OR_RETURN(const PreprocessStyle style, PreprocessStyleFor(options.conv_style));
  INTERNVL_ASSIGN_OR_RETURN(const tokenizer::ChatTemplate* chat_template, tokenizer::GetTemplate(options.conv_style));
  if (options.num_image_token < 1 || options.image_size < 1 || options.max_seq_length < 1 ||
      options.min_dynamic_patch < 1 || options.max_dynamic_patch < options.min_dynamic_patch ||
      options.num_video_frames < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad data options: num_image_token=", options.num_image_token, " image_size=", options.image_size,
                     " max_seq_length=", options.max_seq_length, " min/max_dynamic_patch=", options.min_dynamic_patch,
                     "/", options.max_dynamic_patch, " num_video_frames=", options.num_video_frames));
  }
  std::optional<int> img_end;
  for (const char* token : {tokenizer::kImgStartToken, tokenizer::kImgEndToken, tokenizer::kImgContextToken}) {
    const std::optional<int> id = tokenizer.TokenToId(token);
    if (!id) {
      return absl::InvalidArgumentError(
          absl::StrCat("the tokenizer has no ", token, " token (not an InternVL tokenizer folder)"));
    }
    if (std::strcmp(token, tokenizer::kImgEndToken) == 0) img_end = id;
  }
  auto ds = std::make_unique<SftDatasetImpl>(tokenizer, options, chat_template, style, *img_end);
  INTERNVL_RETURN_IF_ERROR(ds->Load(meta_path));
  return std::unique_ptr<SftDataset>(std::move(ds));
}

Batch Collate(const std::vector<Sample>& samples, int64_t pad_id) {
  Batch b;
  b.batch_size = static_cast<int64_t>(samples.size());
  for (const Sample& s : samples) b.seq_len = std::max<int64_t>(b.seq_len, s.input_ids.size());
  const size_t total = static_cast<size_t>(b.batch_size * b.seq_len);
  b.input_ids.assign(total, pad_id);
  b.labels.assign(total, kIgnoreIndex);
  b.position_ids.assign(total, pad_id);
  b.attention_mask.assign(total, 0);
  int64_t tiles = 0;
  std::vector<int64_t> tile_shape;
  for (size_t i = 0; i < samples.size(); ++i) {
    const Sample& s = samples[i];
    const size_t row = i * b.seq_len;
    std::copy(s.input_ids.begin(), s.input_ids.end(), b.input_ids.begin() + row);
    std::copy(s.labels.begin(), s.labels.end(), b.labels.begin() + row);
    std::copy(s.position_ids.begin(), s.position_ids.end(), b.position_ids.begin() + row);
    b.image_flags.insert(b.image_flags.end(), s.image_flags.begin(), s.image_flags.end());
    if (!s.pixel_values.empty()) {
      tiles += s.pixel_values.shape[0];
      if (tile_shape.empty()) tile_shape.assign(s.pixel_values.shape.begin() + 1, s.pixel_values.shape.end());
    }
  }
  for (size_t k = 0; k < total; ++k) b.attention_mask[k] = b.input_ids[k] != pad_id ? 1 : 0;
  if (tiles > 0) {
    std::vector<int64_t> shape = {tiles};
    shape.insert(shape.end(), tile_shape.begin(), tile_shape.end());
    b.pixel_values = HostTensor(DType::kF32, shape);
    uint8_t* out = b.pixel_values.bytes.data();
    for (const Sample& s : samples) {
      if (s.pixel_values.empty()) continue;
      std::memcpy(out, s.pixel_values.bytes.data(), s.pixel_values.bytes.size());
      out += s.pixel_values.bytes.size();
    }
  }
  return b;
}

}  // namespace internvl::train
