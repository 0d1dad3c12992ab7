// Streaming safetensors writer for checkpoints too large to hold in memory
// (InternVL2-40B is ~80 GB in bf16): every shard's header is computed up front
// from names, dtypes and shapes, then tensor data is produced chunk by chunk
// by a callback and written straight to disk. Shards follow the HF layout:
// one `model.safetensors`, or `model-0000K-of-0000N.safetensors` plus
// `model.safetensors.index.json` ({"metadata": {"total_size"}, "weight_map"}),
// which TensorStore::OpenDir reads.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/safetensors.h"

namespace internvl::modelgen {

struct PlannedTensor {
  std::string name;
  DType dtype = DType::kBF16;
  std::vector<int64_t> shape;

  int64_t numel() const;
  uint64_t nbytes() const { return static_cast<uint64_t>(numel()) * DTypeSize(dtype); }
};

// Fills `count` elements of tensor `index` starting at element `first` into
// `out` (count * DTypeSize bytes, little-endian).
using FillFn = std::function<absl::Status(size_t index, int64_t first, int64_t count, uint8_t* out)>;

// transformers' default max_shard_size ("5GB" = 5e9 bytes).
inline constexpr uint64_t kDefaultMaxShardBytes = 5'000'000'000ull;

struct ShardOptions {
  // A shard is closed before a tensor that would take it past this size (a
  // single larger tensor gets a shard of its own), as HF's shard_checkpoint.
  uint64_t max_shard_bytes = kDefaultMaxShardBytes;
  // Elements produced per FillFn call: bounds memory use.
  int64_t chunk_elements = int64_t{8} << 20;
};

struct WrittenCheckpoint {
  std::vector<std::string> files;  // file names inside the folder, index.json last if any
  uint64_t total_bytes = 0;        // tensor data bytes (index.json's total_size)
  uint64_t file_bytes = 0;         // bytes on disk (headers included)
};

// Writes `tensors` (unique names, laid out in the given order) into `dir`.
// Each file is written to a temporary name and renamed when complete, so a
// crashed run never leaves a truncated file under a final name.
absl::StatusOr<WrittenCheckpoint> WriteShardedSafetensors(const std::string& dir,
                                                          const std::vector<PlannedTensor>& tensors,
                                                          const FillFn& fill, const ShardOptions& options = {});

}  // namespace internvl::modelgen
