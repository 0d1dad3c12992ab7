#include "core/safetensors.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/status.h"
#include "nlohmann/json.hpp"

namespace internvl {
namespace {

using json = nlohmann::json;

// Headers beyond this are rejected: real checkpoints have headers of a few
// hundred KB; a huge length is a corrupt or hostile file.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

struct DTypeInfo {
  DType dtype;
  const char* name;
  size_t size;
};
constexpr DTypeInfo kDTypes[] = {
    {DType::kF64, "F64", 8}, {DType::kF32, "F32", 4}, {DType::kF16, "F16", 2},
    {DType::kBF16, "BF16", 2}, {DType::kI64, "I64", 8}, {DType::kI32, "I32", 4},
    {DType::kI16, "I16", 2}, {DType::kI8, "I8", 1}, {DType::kU8, "U8", 1},
    {DType::kBool, "BOOL", 1},
};

absl::Status Malformed(const std::string& path, absl::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat("malformed safetensors file ", path, ": ", what));
}

}  // namespace

const char* DTypeName(DType dtype) {
  for (const auto& d : kDTypes)
    if (d.dtype == dtype) return d.name;
  return "?";
}

absl::StatusOr<DType> ParseDType(absl::string_view name) {
  for (const auto& d : kDTypes)
    if (name == d.name) return d.dtype;
  return absl::InvalidArgumentError(absl::StrCat("unsupported dtype '", name, "'"));
}

size_t DTypeSize(DType dtype) {
  for (const auto& d : kDTypes)
    if (d.dtype == dtype) return d.size;
  return 0;
}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  auto out = std::unique_ptr<SafetensorsFile>(new SafetensorsFile());
  INTERNVL_ASSIGN_OR_RETURN(out->file_, MappedFile::Open(path));
  const uint8_t* base = out->file_->data();
  const size_t size = out->file_->size();
  if (size < 8) return Malformed(path, absl::StrCat("file is ", size, " bytes, shorter than the 8-byte header length"));
  uint64_t header_len = 0;
  std::memcpy(&header_len, base, 8);  // little-endian host (x86-64, aarch64)
  if (header_len > kMaxHeaderBytes)
    return Malformed(path, absl::StrCat("header length ", header_len, " exceeds the limit of ", kMaxHeaderBytes));
  if (header_len > size - 8)
    return Malformed(path, absl::StrCat("header length ", header_len, " runs past the end of the file (",
                                        size, " bytes): truncated?"));
  json header;
  try {
    header = json::parse(base + 8, base + 8 + header_len);
  } catch (const json::exception& e) {
    return Malformed(path, absl::StrCat("header is not valid JSON: ", e.what()));
  }
  if (!header.is_object()) return Malformed(path, "header is not a JSON object");
  const size_t data_start = 8 + header_len;
  const size_t data_size = size - data_start;

  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const json& entry = it.value();
    if (name == "__metadata__") {
      if (!entry.is_object()) return Malformed(path, "__metadata__ is not an object");
      for (auto m = entry.begin(); m != entry.end(); ++m) {
        if (!m.value().is_string()) return Malformed(path, absl::StrCat("__metadata__.", m.key(), " is not a string"));
        out->metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    auto bad = [&](absl::string_view what) {
      return Malformed(path, absl::StrCat("tensor '", name, "': ", what));
    };
    if (!entry.is_object()) return bad("entry is not an object");
    if (!entry.contains("dtype") || !entry["dtype"].is_string()) return bad("missing dtype");
    if (!entry.contains("shape") || !entry["shape"].is_array()) return bad("missing shape");
    if (!entry.contains("data_offsets") || !entry["data_offsets"].is_array() ||
        entry["data_offsets"].size() != 2)
      return bad("missing or malformed data_offsets");
    auto dtype = ParseDType(entry["dtype"].get<std::string>());
    if (!dtype.ok()) return bad(dtype.status().message());
    TensorView view;
    view.name = name;
    view.dtype = *dtype;
    // numel computed with overflow checks: a hostile shape must not wrap.
    // The non-zero dimensions' product must also fit TensorView::numel()'s
    // int64: a zero dimension zeroes `numel` but not that product.
    uint64_t numel = 1;
    uint64_t nonzero_numel = 1;
    for (const json& d : entry["shape"]) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0) return bad("shape has a non-integer or negative dimension");
      uint64_t dim = d.get<uint64_t>();
      if (dim != 0 && (numel > std::numeric_limits<uint64_t>::max() / dim ||
                       nonzero_numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / dim))
        return bad("shape overflows");
      numel *= dim;
      if (dim != 0) nonzero_numel *= dim;
      view.shape.push_back(static_cast<int64_t>(dim));
    }
    for (const json& o : entry["data_offsets"])
      if (!o.is_number_unsigned() && !(o.is_number_integer() && o.get<int64_t>() >= 0))
        return bad("data_offsets are not non-negative integers");
    uint64_t begin = entry["data_offsets"][0].get<uint64_t>();
    uint64_t end = entry["data_offsets"][1].get<uint64_t>();
    if (begin > end) return bad("data_offsets begin > end");
    if (end > data_size)
      return bad(absl::StrCat("data_offsets [", begin, ", ", end, ") run past the data section (",
                              data_size, " bytes): file truncated?"));
    const uint64_t esize = DTypeSize(view.dtype);
    if (numel > std::numeric_limits<uint64_t>::max() / esize || numel * esize != end - begin)
      return bad(absl::StrCat("byte length ", end - begin, " does not match dtype ", DTypeName(view.dtype),
                              " x shape (", numel, " elements)"));
    view.data = base + data_start + begin;
    view.nbytes = static_cast<size_t>(end - begin);
    ranges.emplace_back(begin, end);
    out->tensors_.emplace(name, std::move(view));
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i)
    if (ranges[i].first < ranges[i - 1].second && ranges[i].first != ranges[i].second)
      return Malformed(path, "tensor data ranges overlap");
  for (auto& [name, view] : out->tensors_) view.file = &out->file_->path();
  return out;
}

const TensorView* SafetensorsFile::Find(absl::string_view name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

std::vector<std::string> SafetensorsFile::Names() const {
  std::vector<std::string> names;
  for (const auto& [name, v] : tensors_) names.push_back(name);
  return names;
}

absl::StatusOr<std::unique_ptr<TensorStore>> TensorStore::OpenFiles(
    const std::vector<std::string>& paths) {
  auto store = std::unique_ptr<TensorStore>(new TensorStore());
  for (const std::string& p : paths) {
    INTERNVL_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(p));
    for (const std::string& name : file->Names()) {
      if (store->index_.count(name))
        return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' appears in more than one file (", p, ")"));
      store->index_.emplace(name, file->Find(name));
    }
    store->files_.push_back(std::move(file));
  }
  store->description_ = absl::StrJoin(paths, ", ");
  return store;
}

absl::StatusOr<std::unique_ptr<TensorStore>> TensorStore::OpenDir(const std::string& dir) {
  namespace fs = std::filesystem;
  const fs::path root(dir);
  std::error_code ec;
  if (!fs::is_directory(root, ec))
    return absl::NotFoundError(absl::StrCat("model directory ", dir, " does not exist or is not a directory"));
  const fs::path single = root / "model.safetensors";
  const fs::path index = root / "model.safetensors.index.json";
  if (fs::exists(index, ec)) {
    INTERNVL_ASSIGN_OR_RETURN(std::string text, ReadFile(index.string()));
    json j;
    try {
      j = json::parse(text);
    } catch (const json::exception& e) {
      return absl::InvalidArgumentError(absl::StrCat(index.string(), " is not valid JSON: ", e.what()));
    }
    if (!j.contains("weight_map") || !j["weight_map"].is_object())
      return absl::InvalidArgumentError(absl::StrCat(index.string(), " has no weight_map object"));
    std::set<std::string> shard_names;
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      if (!it.value().is_string())
        return absl::InvalidArgumentError(absl::StrCat(index.string(), ": weight_map entry '", it.key(), "' is not a file name"));
      const std::string shard = it.value().get<std::string>();
      if (shard.find('/') != std::string::npos || shard == "..")
        return absl::InvalidArgumentError(absl::StrCat(index.string(), ": shard name '", shard, "' is not a plain file name"));
      shard_names.insert(shard);
    }
    std::vector<std::string> paths;
    for (const auto& s : shard_names) paths.push_back((root / s).string());
    INTERNVL_ASSIGN_OR_RETURN(auto store, OpenFiles(paths));
    // Every tensor the index names must be in the shard it names.
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      const TensorView* v = store->Find(it.key());
      if (v == nullptr)
        return absl::InvalidArgumentError(absl::StrCat(index.string(), " lists tensor '", it.key(), "' in ",
                                                       it.value().get<std::string>(), " but that shard lacks it"));
    }
    store->description_ = index.string();
    return store;
  }
  if (fs::exists(single, ec)) {
    INTERNVL_ASSIGN_OR_RETURN(auto store, OpenFiles({single.string()}));
    return store;
  }
  return absl::NotFoundError(absl::StrCat("no model.safetensors or model.safetensors.index.json in ", dir));
}

const TensorView* TensorStore::Find(absl::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : it->second;
}

absl::StatusOr<const TensorView*> TensorStore::Get(absl::string_view name) const {
  const TensorView* v = Find(name);
  if (v == nullptr)
    return absl::NotFoundError(absl::StrCat("tensor '", name, "' not found in ", description_));
  return v;
}

std::vector<std::string> TensorStore::Names() const {
  std::vector<std::string> names;
  for (const auto& [name, v] : index_) names.push_back(name);
  return names;
}

absl::StatusOr<std::string> SerializeSafetensors(const std::vector<TensorRef>& tensors,
                                                 const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  std::set<std::string> seen;
  for (const TensorRef& t : tensors) {
    if (!seen.insert(t.name).second)
      return absl::InvalidArgumentError(absl::StrCat("duplicate tensor name '", t.name, "'"));
    uint64_t numel = 1;
    for (int64_t d : t.shape) {
      if (d < 0) return absl::InvalidArgumentError(absl::StrCat("tensor '", t.name, "' has a negative dimension"));
      numel *= static_cast<uint64_t>(d);
    }
    if (numel * DTypeSize(t.dtype) != t.bytes.size())
      return absl::InvalidArgumentError(absl::StrCat("tensor '", t.name, "': ", t.bytes.size(),
                                                     " bytes do not match its dtype and shape"));
    header[t.name] = {{"dtype", DTypeName(t.dtype)},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + t.bytes.size()}}};
    offset += t.bytes.size();
  }
  std::string h = header.dump();
  // Pad the header with spaces to an 8-byte boundary, as the reference writer does.
  while ((h.size() + 8) % 8 != 0) h.push_back(' ');
  std::string out;
  out.reserve(8 + h.size() + offset);
  uint64_t len = h.size();
  out.append(reinterpret_cast<const char*>(&len), 8);
  out.append(h);
  for (const TensorRef& t : tensors) out.append(reinterpret_cast<const char*>(t.bytes.data()), t.bytes.size());
  return out;
}

absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorRef>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  INTERNVL_ASSIGN_OR_RETURN(std::string bytes, SerializeSafetensors(tensors, metadata));
  return WriteFileAtomic(path, bytes);
}

float Bf16ToFloat(uint16_t v) {
  uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t FloatToBf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if (std::isnan(f)) return 0x7fc0;
  uint32_t rounding = 0x7fff + ((bits >> 16) & 1);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

float F16ToFloat(uint16_t h) {
  uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      exp = 127 - 15 + 1;
      while ((mant & 0x400) == 0) {
        mant <<= 1;
        --exp;
      }
      mant &= 0x3ff;
      bits = sign | (exp << 23) | (mant << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

absl::StatusOr<std::vector<float>> ToFloatVector(const TensorView& view) {
  const int64_t n = view.numel();
  std::vector<float> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    switch (view.dtype) {
      case DType::kF32: {
        float f;
        std::memcpy(&f, view.data + 4 * i, 4);
        out[i] = f;
        break;
      }
      case DType::kF64: {
        double d;
        std::memcpy(&d, view.data + 8 * i, 8);
        out[i] = static_cast<float>(d);
        break;
      }
      case DType::kBF16: {
        uint16_t b;
        std::memcpy(&b, view.data + 2 * i, 2);
        out[i] = Bf16ToFloat(b);
        break;
      }
      case DType::kF16: {
        uint16_t b;
        std::memcpy(&b, view.data + 2 * i, 2);
        out[i] = F16ToFloat(b);
        break;
      }
      default:
        return absl::InvalidArgumentError(
            absl::StrCat("tensor '", view.name, "' has dtype ", DTypeName(view.dtype), ", not a float type"));
    }
  }
  return out;
}

}  // namespace internvl
