// The fine-tuning data pipeline, as the official InternVL training code
// (internvl_chat/internvl/train/internvl_chat_finetune.py @2410d1d:
// build_datasets, LazySupervisedDataset, preprocess_* and
// concat_pad_data_collator). See ../shared/fixtures/training/README.md for the
// behaviour reproduced, quirks included. Torch-free: samples are plain vectors
// and HostTensors.
//
//   INTERNVL_ASSIGN_OR_RETURN(auto ds, SftDataset::Open(meta_path, *tokenizer, options));
//   for (size_t i = 0; i < ds->size(); ++i) {
//     absl::StatusOr<Sample> s = ds->Get(i);   // a bad record is an error here:
//     ...                                      // the caller skips and counts it
//   }
//   Batch b = Collate(samples);
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/host_tensor.h"
#include "core/tokenizer/tokenizer.h"

namespace internvl::train {

// One entry of the meta JSON: {name: {root, annotation, data_augment,
// max_dynamic_patch, repeat_time, length}}. Relative `root` / `annotation`
// are resolved against the meta file's folder (the official code uses the
// current directory; the fixtures' meta works either way from dataset/).
struct DatasetSpec {
  std::string name;
  std::string root;        // folder media paths are relative to
  std::string annotation;  // the .jsonl file
  bool data_augment = false;
  std::optional<int> max_dynamic_patch;  // overrides DataOptions::max_dynamic_patch
  double repeat_time = 1.0;              // < 1 subsamples, > 1 repeats
  int64_t length = 0;                    // informational
};

// Parses a meta JSON. INVALID_ARGUMENT naming the file and entry for a
// malformed file or a missing field; NOT_FOUND for a missing annotation file.
absl::StatusOr<std::vector<DatasetSpec>> LoadMeta(const std::string& meta_path);

struct DataOptions {
  std::string conv_style;  // template name: Hermes-2, internlm2-chat, internvl2_5, phi3-chat
  int num_image_token = 256;
  int image_size = 448;
  int min_dynamic_patch = 1;
  int max_dynamic_patch = 12;  // the script's --max_dynamic_patch
  bool dynamic_image_size = true;
  bool use_thumbnail = true;
  int max_seq_length = 4096;  // truncation (model_max_length)
  // Frames per video record, chosen as the model card's load_video /
  // get_index does (middle of equal segments). The official training code
  // samples randomly between min_num_frame and max_num_frame through its
  // storage loader; a fixed, reproducible choice is used here instead.
  int num_video_frames = 8;
  // repeat_time: the integer part repeats every line, the fractional part
  // adds int(lines * fraction) distinct lines (so 0.5 keeps half, 1.5 is all
  // plus half). Those lines are drawn by a Fisher-Yates partial shuffle
  // driven by std::mt19937_64 seeded from (seed, dataset index in the meta
  // file), then put back in file order: deterministic across runs and
  // machines. (The official LazySupervisedDataset of the fixtures' era takes
  // the FIRST int(n * r) lines and asserts an integer repeat_time above 1;
  // later versions draw with random.sample and int() the repeat count.)
  uint64_t seed = 42;
  // When set, every data file the dataset opens (annotations, images,
  // videos; the meta file is the caller's) must resolve, symlinks followed,
  // inside this folder:
  // otherwise INVALID_ARGUMENT naming the record. Checked when each file is
  // opened, so a file swapped after a check is caught too. The trainer
  // service sets it to its --data-root; the CLI leaves it empty (the official
  // os.path.join, absolute paths allowed).
  std::string data_root;
};

// One tokenised training sample (what LazySupervisedDataset.__getitem__
// returns, before collation).
struct Sample {
  std::vector<int64_t> input_ids;
  std::vector<int64_t> labels;  // -100 = not supervised; NOT shifted
  std::vector<uint8_t> attention_mask;  // input_ids != pad (the collator recomputes it)
  std::vector<int64_t> position_ids;    // cumsum(attention_mask) - 1
  std::vector<int64_t> image_flags;     // one per tile: 1 = real, 0 = text-only dummy tile
  HostTensor pixel_values;              // float32 [tiles, 3, S, S], normalised
  bool fully_masked = false;            // tokenization mismatch: all labels -100
  std::string warning;                  // why fully_masked (the official warning text), else empty
  std::string source;                   // "dataset_name:line" for messages
};

// concat_pad_data_collator(pad_id): right-pads input_ids with pad_id, labels
// with -100, position_ids with pad_id (0 by default, as the official collator
// pads them) to the longest sample; attention_mask =
// input_ids != pad_id (recomputed: real tokens equal to pad_id are masked);
// pixel_values and image_flags concatenated over the batch.
struct Batch {
  int64_t batch_size = 0, seq_len = 0;
  std::vector<int64_t> input_ids;        // [B, L] row-major
  std::vector<int64_t> labels;           // [B, L]
  std::vector<uint8_t> attention_mask;   // [B, L]
  std::vector<int64_t> position_ids;     // [B, L]
  std::vector<int64_t> image_flags;      // [tiles]
  HostTensor pixel_values;               // float32 [tiles, 3, S, S]
};
Batch Collate(const std::vector<Sample>& samples, int64_t pad_id = 0);

class SftDataset {
 public:
  // Reads the meta file and every annotation (lines are parsed lazily, in
  // Get). The tokenizer must outlive the dataset. INVALID_ARGUMENT for an
  // unknown conv_style (listing the known ones), bad options, or a tokenizer
  // without InternVL's image tokens. A dataset with data_augment: true is
  // accepted but NOT augmented (build_transform(is_train=True)'s random JPEG
  // re-encoding is not implemented): it gets the is_train=False transform and
  // a notice (see notices()), printed once to stderr.
  static absl::StatusOr<std::unique_ptr<SftDataset>> Open(const std::string& meta_path,
                                                          const tokenizer::Tokenizer& tokenizer,
                                                          const DataOptions& options);
  virtual ~SftDataset() = default;

  // Records after repeat_time, over all datasets in meta order.
  virtual size_t size() const = 0;
  // Builds sample `index`. A bad record (malformed JSON line, missing or
  // unreadable image/video, wrong number of <image> placeholders, a system
  // turn the template cannot take) is an error naming Sample::source; the
  // trainer skips it with a warning and counts it. OUT_OF_RANGE past size().
  // Thread-safe (const, no shared mutable state): samples may be built on
  // several threads at once.
  virtual absl::StatusOr<Sample> Get(size_t index) const = 0;
  // Where record `index` comes from ("dataset_name:line").
  virtual std::string SourceOf(size_t index) const = 0;
  // Things Open noticed that the user should know (e.g. data_augment not
  // implemented), one line each.
  virtual std::vector<std::string> notices() const = 0;
};

}  // namespace internvl::train
