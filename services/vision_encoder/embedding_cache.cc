#include "services/vision_encoder/embedding_cache.h"

#include <cstring>

#include "absl/strings/str_cat.h"

namespace internvl::services {
namespace {

constexpr char kMagic[4] = {'I', 'V', 'L', 'E'};
constexpr uint32_t kVersion = 1;
constexpr uint32_t kMaxDims = 8;
constexpr DType kDTypes[] = {DType::kF64, DType::kF32, DType::kF16, DType::kBF16, DType::kI64,
                             DType::kI32, DType::kI16, DType::kI8,  DType::kU8,   DType::kBool};

template <typename T>
void Append(std::string* out, T v) {
  uint8_t le[sizeof(T)];
  for (size_t i = 0; i < sizeof(T); ++i) le[i] = static_cast<uint8_t>(static_cast<uint64_t>(v) >> (8 * i));
  out->append(reinterpret_cast<const char*>(le), sizeof(T));
}

// Reads little-endian integers from a bounded buffer.
class Reader {
 public:
  explicit Reader(absl::string_view data) : data_(data) {}
  template <typename T>
  bool Read(T* v) {
    if (data_.size() < sizeof(T)) return false;
    uint64_t x = 0;
    for (size_t i = 0; i < sizeof(T); ++i) x |= static_cast<uint64_t>(static_cast<uint8_t>(data_[i])) << (8 * i);
    *v = static_cast<T>(x);
    data_.remove_prefix(sizeof(T));
    return true;
  }
  bool ReadBytes(size_t n, absl::string_view* out) {
    if (data_.size() < n) return false;
    *out = data_.substr(0, n);
    data_.remove_prefix(n);
    return true;
  }
  size_t remaining() const { return data_.size(); }

 private:
  absl::string_view data_;
};

absl::Status Corrupt(absl::string_view what) {
  return absl::DataLossError(absl::StrCat("corrupt embedding cache value: ", what));
}

}  // namespace

std::string EmbeddingCacheKey(const EmbeddingKeyParts& parts) {
  Sha256 h;
  h.UpdateField("internvl embedding key v1");
  h.UpdateField(absl::string_view(reinterpret_cast<const char*>(parts.media_sha256.data()), parts.media_sha256.size()));
  h.UpdateInt(parts.tiling.min_num).UpdateInt(parts.tiling.max_num).UpdateInt(parts.tiling.use_thumbnail ? 1 : 0);
  h.UpdateInt(parts.tiling.image_size).UpdateInt(parts.num_segments);
  if (const auto& mm = parts.tiling.minimonkey) {  // a different tile list from the same image
    h.UpdateField("minimonkey");
    h.UpdateInt(mm->a_min).UpdateInt(mm->a_max).UpdateInt(mm->b_min).UpdateInt(mm->b_max);
    h.UpdateInt(static_cast<int>(mm->order)).UpdateInt(static_cast<int>(mm->rule)).UpdateInt(mm->image_size);
  }
  h.UpdateField(parts.model_fingerprint);
  return absl::StrCat("internvl:emb:v1:", ToHex(h.Final()));
}

std::string EncodeCacheValue(const HostTensor& tensor) {
  std::string out;
  out.reserve(64 + tensor.shape.size() * 8 + tensor.bytes.size());
  out.append(kMagic, sizeof(kMagic));
  Append<uint32_t>(&out, kVersion);
  Append<uint32_t>(&out, static_cast<uint32_t>(tensor.dtype));
  Append<uint32_t>(&out, static_cast<uint32_t>(tensor.shape.size()));
  for (int64_t d : tensor.shape) Append<int64_t>(&out, d);
  Append<uint64_t>(&out, tensor.bytes.size());
  const Sha256Digest sum = Sha256().Update(tensor.bytes.data(), tensor.bytes.size()).Final();
  out.append(reinterpret_cast<const char*>(sum.data()), sum.size());
  out.append(reinterpret_cast<const char*>(tensor.bytes.data()), tensor.bytes.size());
  return out;
}

absl::StatusOr<HostTensor> DecodeCacheValue(absl::string_view value) {
  Reader r(value);
  absl::string_view magic;
  uint32_t version = 0, dtype = 0, ndim = 0;
  if (!r.ReadBytes(4, &magic) || std::memcmp(magic.data(), kMagic, 4) != 0) return Corrupt("bad magic");
  if (!r.Read(&version) || version != kVersion) return Corrupt(absl::StrCat("version ", version));
  if (!r.Read(&dtype) || dtype >= std::size(kDTypes)) return Corrupt("bad dtype");
  if (!r.Read(&ndim) || ndim > kMaxDims) return Corrupt("bad rank");
  HostTensor t;
  t.dtype = kDTypes[dtype];
  uint64_t numel = 1;
  for (uint32_t i = 0; i < ndim; ++i) {
    int64_t d = 0;
    if (!r.Read(&d) || d < 0 || (d > 0 && numel > (uint64_t{1} << 40) / static_cast<uint64_t>(d))) {
      return Corrupt("bad shape");
    }
    numel *= static_cast<uint64_t>(d);
    t.shape.push_back(d);
  }
  uint64_t payload = 0;
  absl::string_view checksum, bytes;
  if (!r.Read(&payload) || payload != numel * DTypeSize(t.dtype)) return Corrupt("size does not match the shape");
  if (!r.ReadBytes(32, &checksum)) return Corrupt("truncated header");
  if (!r.ReadBytes(payload, &bytes) || r.remaining() != 0) return Corrupt("payload length");
  const Sha256Digest sum = Sha256Of(bytes);
  if (std::memcmp(sum.data(), checksum.data(), sum.size()) != 0) return Corrupt("checksum mismatch");
  t.bytes.assign(bytes.begin(), bytes.end());
  return t;
}

}  // namespace internvl::services
