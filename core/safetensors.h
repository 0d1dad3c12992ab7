// Reader and writer for the safetensors format
// (https://github.com/huggingface/safetensors): an 8-byte little-endian header
// length, a JSON header {name: {dtype, shape, data_offsets}, "__metadata__"},
// then the raw little-endian row-major data. No libtorch here: views are raw
// bytes; core/model/ turns them into tensors.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "core/files.h"

namespace internvl {

enum class DType { kF64, kF32, kF16, kBF16, kI64, kI32, kI16, kI8, kU8, kBool };

// "F32", "BF16", ... as written in safetensors headers.
const char* DTypeName(DType dtype);
absl::StatusOr<DType> ParseDType(absl::string_view name);
size_t DTypeSize(DType dtype);

// A tensor inside a mapped safetensors file (valid while the file is open).
struct TensorView {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;
  size_t nbytes = 0;
  const std::string* file = nullptr;  // the file holding it, for errors

  int64_t numel() const;
};

// One .safetensors file, memory-mapped. Every header entry is validated on
// open: known dtype, non-negative shape, offsets inside the data section,
// byte length == numel * dtype size, no overlaps. A malformed file is an
// INVALID_ARGUMENT naming the file (and the tensor), never a crash.
class SafetensorsFile {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);

  const TensorView* Find(absl::string_view name) const;
  std::vector<std::string> Names() const;  // sorted
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::string& path() const { return file_->path(); }

 private:
  std::unique_ptr<MappedFile> file_;
  std::map<std::string, TensorView, std::less<>> tensors_;
  std::map<std::string, std::string> metadata_;
};

// The weights of a checkpoint folder: `model.safetensors`, or shards listed
// by `model.safetensors.index.json` ({"weight_map": {tensor: file}}).
class TensorStore {
 public:
  // Opens `dir`'s checkpoint (either layout).
  static absl::StatusOr<std::unique_ptr<TensorStore>> OpenDir(const std::string& dir);
  // Opens explicit files (all tensors of all files; duplicates are an error).
  static absl::StatusOr<std::unique_ptr<TensorStore>> OpenFiles(
      const std::vector<std::string>& paths);

  const TensorView* Find(absl::string_view name) const;
  // NOT_FOUND naming the tensor and the checkpoint when absent.
  absl::StatusOr<const TensorView*> Get(absl::string_view name) const;
  std::vector<std::string> Names() const;  // sorted
  const std::string& description() const { return description_; }

 private:
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorView*, std::less<>> index_;
  std::string description_;
};

// A tensor to write: bytes must be numel * DTypeSize(dtype) long.
struct TensorRef {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  absl::Span<const uint8_t> bytes;
};

// Writes a safetensors file (atomically: temp file + rename). Tensors are laid
// out in the order given; names must be unique.
absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorRef>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

// Serialises to bytes in memory (same format as the file).
absl::StatusOr<std::string> SerializeSafetensors(
    const std::vector<TensorRef>& tensors, const std::map<std::string, std::string>& metadata);

// bf16/f16 <-> f32 scalar conversions (round to nearest even, as torch does).
float Bf16ToFloat(uint16_t v);
uint16_t FloatToBf16(float f);
float F16ToFloat(uint16_t v);

// Copies any floating view into float32 (for tests and tools).
absl::StatusOr<std::vector<float>> ToFloatVector(const TensorView& view);

}  // namespace internvl
