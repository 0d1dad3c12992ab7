// The vision encoder's logic, transport-free: cache lookup, single-flight,
// encode, cache store, and the metrics around them. The gRPC handlers only
// convert messages and call Embed().
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "core/host_tensor.h"
#include "internvl/v1/vision_encoder.pb.h"
#include "services/common/log.h"
#include "services/common/metrics.h"
#include "services/vision_encoder/embedding_cache.h"
#include "services/vision_encoder/single_flight.h"

namespace internvl::services {

// uint8 tiles [N, S, S, 3] -> embeddings [N, T, H]. In production
// VisionModelEncoder (vision_model_encoder.h); tests may count calls.
using TileEncoder = std::function<absl::StatusOr<HostTensor>(const HostTensor& tiles_u8)>;
// Produces the tiles lazily: only called on a cache miss (EncodeImages
// decodes the image only when it has to).
using TileSource = std::function<absl::StatusOr<HostTensor>()>;

class Embedder {
 public:
  // `cache` may be null (no caching). Both must outlive the Embedder.
  Embedder(TileEncoder encoder, EmbeddingCache* cache, MetricsRegistry* registry);

  struct Result {
    std::shared_ptr<const HostTensor> embeddings;
    v1::EmbeddingSource source = v1::EMBEDDING_SOURCE_UNSPECIFIED;
  };

  // With a non-empty `key`: single-flight (concurrent calls with the same
  // key encode once), inside it the cache (when there is one), then encode +
  // store. With an empty key: encode. Cache errors are misses (logged, rate-limited, and counted in
  // internvl_cache_errors_total); only tile or encode errors fail the call.
  absl::StatusOr<Result> Embed(const std::string& key, const TileSource& tiles);

 private:
  absl::StatusOr<HostTensor> Encode(const TileSource& tiles);
  absl::StatusOr<Result> LookupOrEncode(const std::string& key, const TileSource& tiles);

  TileEncoder encoder_;
  EmbeddingCache* cache_;
  SingleFlight<absl::StatusOr<Result>> flights_;
  RateLimitedLog cache_log_{std::chrono::seconds(5)};
  Counter* encodes_;
  Counter* encoded_tiles_;
  Counter* hits_;
  Counter* misses_;
  Counter* shared_;
  Counter* get_errors_;
  Counter* put_errors_;
  Histogram* encode_seconds_;
  Histogram* cache_get_seconds_;
};

}  // namespace internvl::services
