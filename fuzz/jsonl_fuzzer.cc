// Fuzzes the fine-tuning data pipeline: the meta JSON (LoadMeta), the jsonl
// records (SftDataset::Open + Get: JSON parsing, conversation checks, the
// per-template preprocess functions, image and video records through the real
// preprocessing) and Collate. The tokenizer is the tiny-qwen2 fixture's
// ($INTERNVL_FIXTURES, default ../shared/fixtures beside the repo), loaded
// once.
//
// Input: two options bytes (template, image tokens, tile side, sequence
// length, dynamic patches), then files packed as parts separated by
// "\n@@@@\n": meta.json, data.jsonl, img.png, vid.mp4 (written to a scratch
// folder; records name their media relative to it).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "core/tokenizer/tokenizer.h"
#include "core/train/data.h"
#include "fuzz/fuzz_util.h"

namespace internvl::fuzz {
namespace {

constexpr const char* kFiles[] = {"meta.json", "data.jsonl", "img.png", "vid.mp4"};
constexpr size_t kNumFiles = sizeof(kFiles) / sizeof(kFiles[0]);
constexpr const char* kStyles[] = {"Hermes-2", "internlm2-chat", "internvl2_5", "phi3-chat"};
constexpr int kTileSides[] = {28, 14, 56, 28};
constexpr int kMaxSeqLengths[] = {4096, 256, 40, 1};
// Records built per input (a meta may repeat lines a million times).
constexpr size_t kMaxRecords = 12;

const tokenizer::Tokenizer& Tok() {
  static const tokenizer::Tokenizer* tok = [] {
    const std::string dir = SharedDir("INTERNVL_FIXTURES", "fixtures") + "/tiny-qwen2";
    auto t = tokenizer::Tokenizer::Load(dir);
    if (!t.ok()) {
      std::fprintf(stderr, "jsonl_fuzzer: cannot load the tokenizer of %s: %s (set INTERNVL_FIXTURES)\n", dir.c_str(),
                   t.status().ToString().c_str());
      std::abort();
    }
    return t->release();
  }();
  return *tok;
}

train::DataOptions Options(uint8_t a, uint8_t b) {
  train::DataOptions o;
  o.conv_style = kStyles[a & 0x03];
  o.num_image_token = 1 + ((a >> 2) & 0x03);
  o.image_size = kTileSides[(a >> 4) & 0x03];
  o.max_seq_length = kMaxSeqLengths[(a >> 6) & 0x03];
  o.min_dynamic_patch = 1 + (b & 0x01);
  o.max_dynamic_patch = o.min_dynamic_patch + ((b >> 1) & 0x03);
  o.dynamic_image_size = (b & 0x08) == 0;
  o.use_thumbnail = (b & 0x10) == 0;
  o.num_video_frames = 1 + ((b >> 5) & 0x01);
  o.seed = b >> 6;
  return o;
}

}  // namespace
}  // namespace internvl::fuzz

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  internvl::fuzz::Tok();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace internvl::fuzz;
  namespace train = internvl::train;
  if (size < 2 || size > kMaxInputBytes) return 0;
  const train::DataOptions options = Options(data[0], data[1]);
  const absl::string_view input(reinterpret_cast<const char*>(data) + 2, size - 2);
  WriteScratchFiles(input, kPartSeparator, kFiles, kNumFiles);
  const std::string meta = ScratchDir() + "/meta.json";
  (void)train::LoadMeta(meta);
  auto dataset = train::SftDataset::Open(meta, Tok(), options);
  if (!dataset.ok()) return 0;
  const train::SftDataset& ds = **dataset;
  std::vector<train::Sample> samples;
  for (size_t i = 0; i < ds.size() && i < kMaxRecords; ++i) {
    (void)ds.SourceOf(i);
    auto sample = ds.Get(i);
    if (!sample.ok()) continue;
    const size_t n = sample->input_ids.size();
    if (sample->labels.size() != n || sample->attention_mask.size() != n || sample->position_ids.size() != n ||
        n > static_cast<size_t>(options.max_seq_length))
      std::abort();
    if (!sample->pixel_values.empty() &&
        static_cast<size_t>(sample->pixel_values.shape[0]) != sample->image_flags.size())
      std::abort();
    samples.push_back(std::move(*sample));
  }
  (void)ds.Get(ds.size());  // OUT_OF_RANGE
  if (!samples.empty()) {
    const train::Batch batch = train::Collate(samples, Tok().pad_token_id().value_or(0));
    if (batch.batch_size != static_cast<int64_t>(samples.size()) ||
        batch.input_ids.size() != static_cast<size_t>(batch.batch_size * batch.seq_len))
      std::abort();
  }
  return 0;
}
