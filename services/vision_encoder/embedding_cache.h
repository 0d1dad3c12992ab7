// The vision encoder's embedding cache: interface, key derivation and value
// codec. Implementations: InMemoryEmbeddingCache (per process, LRU) and
// RedisEmbeddingCache (shared across replicas), chosen in main.cc.
//
// Failure policy lives in the caller (Embedder): Get/Put return errors
// (UNAVAILABLE, DEADLINE_EXCEEDED, DATA_LOSS...) and the caller turns every
// error into a miss with a log line and a metric, never a failed request.
#pragma once

#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/host_tensor.h"
#include "core/preprocess/tiling.h"
#include "services/common/sha256.h"

namespace internvl::services {

class EmbeddingCache {
 public:
  virtual ~EmbeddingCache() = default;
  // nullopt on a miss; an error when the cache could not answer.
  virtual absl::StatusOr<std::optional<HostTensor>> Get(const std::string& key) = 0;
  virtual absl::Status Put(const std::string& key, const HostTensor& value) = 0;
  // "redis" / "memory", for logs and metric labels.
  virtual const char* name() const = 0;
};

// Everything the embeddings of a media depend on.
struct EmbeddingKeyParts {
  // SHA-256 of the encoded media (image or video file), or of the tile bytes
  // when the caller has no media (then the tiling fields still count).
  Sha256Digest media_sha256{};
  preprocess::TilingOptions tiling;
  int num_segments = 0;  // video frames sampled; 0 for images
  // Identifies the vision weights and compute dtype (VisionModel::fingerprint
  // + dtype name).
  std::string model_fingerprint;
};

// "internvl:emb:v1:" + hex SHA-256 over the length-prefixed parts. The
// version prefix changes whenever the key or value format changes, so old
// entries are never misread.
std::string EmbeddingCacheKey(const EmbeddingKeyParts& parts);

// Value format (all integers little-endian):
//   magic "IVLE" | u32 version (1) | u32 dtype (DType enum value) |
//   u32 ndim | i64 shape[ndim] | u64 payload bytes | 32-byte SHA-256 of the
//   payload | payload
std::string EncodeCacheValue(const HostTensor& tensor);
// DATA_LOSS for anything malformed: short, wrong magic/version, unknown
// dtype, shape/size mismatch, checksum mismatch.
absl::StatusOr<HostTensor> DecodeCacheValue(absl::string_view value);

}  // namespace internvl::services
