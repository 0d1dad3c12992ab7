// HostTensor <-> TensorChunk streams (protos/internvl/v1/tensor.proto).
//
// Senders split a tensor into chunks of at most `max_chunk_bytes` data bytes
// (kept under the channel's message cap). Receivers feed chunks to a
// TensorAssembler, which validates the declared header against the shape and
// a byte limit, and the chunk order as it goes, and allocates only as data
// arrives: a malicious or buggy peer cannot make us allocate more than the
// limit, hold memory it has not sent, or return a tensor with holes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/host_tensor.h"
#include "core/safetensors.h"
#include "internvl/v1/tensor.pb.h"

namespace internvl::services {

// 1 MiB: well under gRPC's 4 MiB default message cap, large enough that the
// per-message overhead is negligible.
inline constexpr size_t kDefaultMaxChunkBytes = size_t{1} << 20;

// DType <-> wire enum. INVALID_ARGUMENT for UNSPECIFIED / unknown values and
// for dtypes the wire format has no value for (I16, I8, BOOL).
absl::StatusOr<v1::DataType> ToProtoDataType(DType dtype);
absl::StatusOr<DType> FromProtoDataType(v1::DataType dtype);

// Splits `tensor` into chunks (the first carries the header). A zero-byte
// tensor gives one chunk with empty data. max_chunk_bytes must be > 0.
absl::StatusOr<std::vector<v1::TensorChunk>> ChunkTensor(const HostTensor& tensor, size_t max_chunk_bytes);

// Reassembles one tensor from its chunks. Usage:
//   TensorAssembler a(limit);
//   for each chunk: INTERNVL_RETURN_IF_ERROR(a.Add(chunk));
//   if (a.complete()) tensor = a.Take();
class TensorAssembler {
 public:
  // Tensors whose header declares more than max_total_bytes are refused with
  // RESOURCE_EXHAUSTED.
  explicit TensorAssembler(uint64_t max_total_bytes) : max_total_bytes_(max_total_bytes) {}

  // Adds the next chunk. Errors (the assembler must then be discarded):
  // INVALID_ARGUMENT for a first chunk without header, a header on a later
  // chunk, an unknown dtype, a negative dimension, total_bytes != numel *
  // dtype size, a non-contiguous offset, data past total_bytes, or a chunk
  // after completion; RESOURCE_EXHAUSTED when total_bytes > the limit.
  absl::Status Add(const v1::TensorChunk& chunk);

  bool started() const { return started_; }
  // All declared bytes received.
  bool complete() const { return started_ && received_ == total_; }
  // Bytes held so far (what the peer has sent).
  uint64_t bytes_held() const { return tensor_.bytes.size(); }
  // The assembled tensor; only when complete(). Resets the assembler so it
  // can receive the next tensor of the stream.
  HostTensor Take();

 private:
  absl::Status Start(const v1::TensorHeader& header);

  uint64_t max_total_bytes_;
  bool started_ = false;
  uint64_t received_ = 0;
  uint64_t total_ = 0;
  HostTensor tensor_;
};

}  // namespace internvl::services
