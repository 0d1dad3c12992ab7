#include "services/common/tensor_chunks.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/status.h"

namespace internvl::services {

absl::StatusOr<v1::DataType> ToProtoDataType(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return v1::DATA_TYPE_F32;
    case DType::kF16:
      return v1::DATA_TYPE_F16;
    case DType::kBF16:
      return v1::DATA_TYPE_BF16;
    case DType::kU8:
      return v1::DATA_TYPE_U8;
    case DType::kI32:
      return v1::DATA_TYPE_I32;
    case DType::kI64:
      return v1::DATA_TYPE_I64;
    case DType::kF64:
      return v1::DATA_TYPE_F64;
    default:
      break;
  }
  return absl::InvalidArgumentError(absl::StrCat("dtype ", DTypeName(dtype), " has no wire encoding"));
}

absl::StatusOr<DType> FromProtoDataType(v1::DataType dtype) {
  switch (dtype) {
    case v1::DATA_TYPE_F32:
      return DType::kF32;
    case v1::DATA_TYPE_F16:
      return DType::kF16;
    case v1::DATA_TYPE_BF16:
      return DType::kBF16;
    case v1::DATA_TYPE_U8:
      return DType::kU8;
    case v1::DATA_TYPE_I32:
      return DType::kI32;
    case v1::DATA_TYPE_I64:
      return DType::kI64;
    case v1::DATA_TYPE_F64:
      return DType::kF64;
    default:
      break;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown tensor dtype ", static_cast<int>(dtype)));
}

absl::StatusOr<std::vector<v1::TensorChunk>> ChunkTensor(const HostTensor& tensor, size_t max_chunk_bytes) {
  if (max_chunk_bytes == 0) return absl::InvalidArgumentError("max_chunk_bytes must be > 0");
  if (tensor.bytes.size() != static_cast<size_t>(tensor.numel()) * DTypeSize(tensor.dtype)) {
    return absl::InternalError("tensor bytes do not match its shape");
  }
  INTERNVL_ASSIGN_OR_RETURN(const v1::DataType dtype, ToProtoDataType(tensor.dtype));
  const size_t total = tensor.bytes.size();
  std::vector<v1::TensorChunk> chunks;
  chunks.reserve(total / max_chunk_bytes + 1);
  size_t offset = 0;
  do {
    const size_t n = std::min(max_chunk_bytes, total - offset);
    v1::TensorChunk& chunk = chunks.emplace_back();
    if (offset == 0) {
      v1::TensorHeader* header = chunk.mutable_header();
      header->set_dtype(dtype);
      for (int64_t d : tensor.shape) header->add_shape(d);
      header->set_total_bytes(total);
    }
    chunk.set_offset(offset);
    chunk.set_data(tensor.bytes.data() + offset, n);
    offset += n;
  } while (offset < total);
  return chunks;
}

absl::Status TensorAssembler::Start(const v1::TensorHeader& header) {
  INTERNVL_ASSIGN_OR_RETURN(const DType dtype, FromProtoDataType(header.dtype()));
  // numel * size, refusing negative dimensions and overflow (a shape whose
  // product overflows cannot match any sane total_bytes).
  uint64_t expected = DTypeSize(dtype);
  // The non-zero dimensions' product must fit HostTensor::numel()'s int64
  // too: a zero dimension zeroes `expected` but not that product
  // ([2^62, 4, 0] declares 0 bytes).
  int64_t nonzero_numel = 1;
  for (int64_t d : header.shape()) {
    if (d < 0)
      return absl::InvalidArgumentError(
          absl::StrCat("tensor shape has a negative dimension: [", absl::StrJoin(header.shape(), ","), "]"));
    if (d != 0 && (expected > std::numeric_limits<uint64_t>::max() / static_cast<uint64_t>(d) ||
                   nonzero_numel > std::numeric_limits<int64_t>::max() / d)) {
      return absl::InvalidArgumentError("tensor shape overflows");
    }
    expected *= static_cast<uint64_t>(d);
    if (d != 0) nonzero_numel *= d;
  }
  if (expected != header.total_bytes()) {
    return absl::InvalidArgumentError(absl::StrCat("tensor header declares ", header.total_bytes(),
                                                   " bytes but shape [", absl::StrJoin(header.shape(), ","), "] of ",
                                                   DTypeName(dtype), " needs ", expected));
  }
  if (expected > max_total_bytes_) {
    return absl::ResourceExhaustedError(
        absl::StrCat("tensor of ", expected, " bytes exceeds the limit of ", max_total_bytes_, " bytes"));
  }
  // The bytes grow as chunks arrive: a header alone commits no memory (a
  // peer that declares a large tensor and stalls holds nothing).
  tensor_ = HostTensor();
  tensor_.dtype = dtype;
  tensor_.shape.assign(header.shape().begin(), header.shape().end());
  total_ = expected;
  started_ = true;
  received_ = 0;
  return absl::OkStatus();
}

absl::Status TensorAssembler::Add(const v1::TensorChunk& chunk) {
  if (!started_) {
    if (!chunk.has_header()) return absl::InvalidArgumentError("first tensor chunk has no header");
    INTERNVL_RETURN_IF_ERROR(Start(chunk.header()));
  } else if (chunk.has_header()) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor header repeated at offset ", chunk.offset(), " before the previous tensor completed"));
  }
  if (chunk.offset() != received_) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor chunk at offset ", chunk.offset(), ", expected offset ", received_));
  }
  const uint64_t n = chunk.data().size();
  if (n > total_ - received_) {
    return absl::InvalidArgumentError(absl::StrCat("tensor chunk runs past the declared ", total_, " bytes (offset ",
                                                   chunk.offset(), ", ", n, " bytes)"));
  }
  tensor_.bytes.insert(tensor_.bytes.end(), chunk.data().begin(), chunk.data().end());
  received_ += n;
  return absl::OkStatus();
}

HostTensor TensorAssembler::Take() {
  HostTensor out = std::move(tensor_);
  tensor_ = HostTensor();
  started_ = false;
  received_ = 0;
  total_ = 0;
  return out;
}

}  // namespace internvl::services
