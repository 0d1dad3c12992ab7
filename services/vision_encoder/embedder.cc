#include "services/vision_encoder/embedder.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "core/status.h"

namespace internvl::services {
namespace {

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

Embedder::Embedder(TileEncoder encoder, EmbeddingCache* cache, MetricsRegistry* registry)
    : encoder_(std::move(encoder)),
      cache_(cache),
      encodes_(registry->GetCounter("internvl_encodes_total", "Vision model runs (one per encoded image)")),
      encoded_tiles_(registry->GetCounter("internvl_encoded_tiles_total", "Tiles run through the vision model")),
      hits_(registry->GetCounter("internvl_cache_hits_total", "Embedding cache hits")),
      misses_(registry->GetCounter("internvl_cache_misses_total", "Embedding cache misses (errors included)")),
      shared_(registry->GetCounter("internvl_single_flight_shared_total",
                                   "Requests served by another in-flight encode of the same key")),
      get_errors_(registry->GetCounter("internvl_cache_errors_total", "Embedding cache failures (treated as misses)",
                                       {{"op", "get"}})),
      put_errors_(registry->GetCounter("internvl_cache_errors_total", "Embedding cache failures (treated as misses)",
                                       {{"op", "put"}})),
      encode_seconds_(
          registry->GetHistogram("internvl_encode_seconds", "Vision model time per image", DefaultLatencyBuckets())),
      cache_get_seconds_(registry->GetHistogram("internvl_cache_get_seconds", "Embedding cache lookup time",
                                                DefaultLatencyBuckets())) {}

absl::StatusOr<HostTensor> Embedder::Encode(const TileSource& tiles) {
  INTERNVL_ASSIGN_OR_RETURN(HostTensor u8, tiles());
  const auto start = std::chrono::steady_clock::now();
  INTERNVL_ASSIGN_OR_RETURN(HostTensor out, encoder_(u8));
  encode_seconds_->Observe(SecondsSince(start));
  encodes_->Increment();
  encoded_tiles_->Increment(static_cast<double>(u8.shape.empty() ? 0 : u8.shape[0]));
  return out;
}

absl::StatusOr<Embedder::Result> Embedder::LookupOrEncode(const std::string& key, const TileSource& tiles) {
  if (cache_ == nullptr) {
    INTERNVL_ASSIGN_OR_RETURN(HostTensor encoded, Encode(tiles));
    return Result{std::make_shared<const HostTensor>(std::move(encoded)), v1::EMBEDDING_SOURCE_ENCODED};
  }
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<std::optional<HostTensor>> cached = cache_->Get(key);
  cache_get_seconds_->Observe(SecondsSince(start));
  if (cached.ok() && cached->has_value()) {
    hits_->Increment();
    return Result{std::make_shared<const HostTensor>(std::move(**cached)), v1::EMBEDDING_SOURCE_CACHE};
  }
  misses_->Increment();
  if (!cached.ok()) {
    get_errors_->Increment();
    cache_log_.Warning(absl::StrCat("embedding cache (", cache_->name(),
                                    ") get failed, treating as a miss: ", cached.status().ToString()));
  }
  INTERNVL_ASSIGN_OR_RETURN(HostTensor encoded, Encode(tiles));
  auto shared = std::make_shared<const HostTensor>(std::move(encoded));
  if (absl::Status put = cache_->Put(key, *shared); !put.ok()) {
    put_errors_->Increment();
    cache_log_.Warning(absl::StrCat("embedding cache (", cache_->name(), ") put failed, not cached: ", put.ToString()));
  }
  return Result{std::move(shared), v1::EMBEDDING_SOURCE_ENCODED};
}

absl::StatusOr<Embedder::Result> Embedder::Embed(const std::string& key, const TileSource& tiles) {
  if (key.empty()) {
    INTERNVL_ASSIGN_OR_RETURN(HostTensor encoded, Encode(tiles));
    return Result{std::make_shared<const HostTensor>(std::move(encoded)), v1::EMBEDDING_SOURCE_ENCODED};
  }
  auto outcome = flights_.Do(key, [&] { return LookupOrEncode(key, tiles); });
  if (!outcome.shared) return *outcome.value;
  shared_->Increment();
  // A waiter reports SHARED; an error of the leader (e.g. a corrupt image) is
  // the waiter's error too, since it asked for the same media.
  if (!outcome.value->ok()) return outcome.value->status();
  Result result = **outcome.value;
  result.source = v1::EMBEDDING_SOURCE_SHARED;
  return result;
}

}  // namespace internvl::services
