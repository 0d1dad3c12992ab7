#include "core/modelgen/shard_writer.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/files.h"
#include "core/status.h"
#include "nlohmann/json.hpp"

namespace internvl::modelgen {
namespace {

using nlohmann::json;

struct Shard {
  std::vector<size_t> members;  // indices into the tensor list
  uint64_t data_bytes = 0;
};

std::vector<Shard> PlanShards(const std::vector<PlannedTensor>& tensors, uint64_t max_bytes) {
  std::vector<Shard> shards(1);
  for (size_t i = 0; i < tensors.size(); ++i) {
    const uint64_t n = tensors[i].nbytes();
    if (!shards.back().members.empty() && shards.back().data_bytes + n > max_bytes) shards.emplace_back();
    shards.back().members.push_back(i);
    shards.back().data_bytes += n;
  }
  return shards;
}

// The header bytes (JSON padded with spaces to an 8-byte boundary, as the
// reference writer and core/safetensors.cc do).
std::string ShardHeader(const std::vector<PlannedTensor>& tensors, const Shard& shard) {
  json header = json::object();
  header["__metadata__"] = {{"format", "pt"}};
  uint64_t offset = 0;
  for (size_t i : shard.members) {
    const PlannedTensor& t = tensors[i];
    header[t.name] = {{"dtype", DTypeName(t.dtype)}, {"shape", t.shape}, {"data_offsets", {offset, offset + t.nbytes()}}};
    offset += t.nbytes();
  }
  std::string h = header.dump();
  while (h.size() % 8 != 0) h.push_back(' ');
  return h;
}

struct FileCloser {
  void operator()(std::FILE* f) const {
    if (f) std::fclose(f);
  }
};

absl::Status WriteShard(const std::string& path, const std::vector<PlannedTensor>& tensors, const Shard& shard,
                        const FillFn& fill, const ShardOptions& options, uint64_t* file_bytes) {
  const std::string tmp = path + ".tmp";
  std::unique_ptr<std::FILE, FileCloser> f(std::fopen(tmp.c_str(), "wb"));
  if (!f) return absl::InternalError(absl::StrCat("cannot create ", tmp, ": ", std::strerror(errno)));
  auto write = [&](const void* data, size_t n) -> absl::Status {
    if (std::fwrite(data, 1, n, f.get()) != n)
      return absl::InternalError(absl::StrCat("writing ", tmp, ": ", std::strerror(errno)));
    return absl::OkStatus();
  };
  const std::string header = ShardHeader(tensors, shard);
  const uint64_t header_len = header.size();  // little-endian on every supported host
  INTERNVL_RETURN_IF_ERROR(write(&header_len, sizeof(header_len)));
  INTERNVL_RETURN_IF_ERROR(write(header.data(), header.size()));
  std::vector<uint8_t> buffer;
  for (size_t i : shard.members) {
    const PlannedTensor& t = tensors[i];
    const size_t elem = DTypeSize(t.dtype);
    const int64_t numel = t.numel();
    for (int64_t first = 0; first < numel; first += options.chunk_elements) {
      const int64_t count = std::min(options.chunk_elements, numel - first);
      buffer.resize(static_cast<size_t>(count) * elem);
      INTERNVL_RETURN_IF_ERROR(fill(i, first, count, buffer.data()));
      INTERNVL_RETURN_IF_ERROR(write(buffer.data(), buffer.size()));
    }
  }
  std::FILE* raw = f.release();
  if (std::fclose(raw) != 0) return absl::InternalError(absl::StrCat("closing ", tmp, ": ", std::strerror(errno)));
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) return absl::InternalError(absl::StrCat("renaming ", tmp, " to ", path, ": ", ec.message()));
  *file_bytes += sizeof(header_len) + header.size() + shard.data_bytes;
  return absl::OkStatus();
}

}  // namespace

int64_t PlannedTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

absl::StatusOr<WrittenCheckpoint> WriteShardedSafetensors(const std::string& dir,
                                                          const std::vector<PlannedTensor>& tensors,
                                                          const FillFn& fill, const ShardOptions& options) {
  if (tensors.empty()) return absl::InvalidArgumentError("no tensors to write");
  if (options.chunk_elements <= 0 || options.max_shard_bytes == 0)
    return absl::InvalidArgumentError("chunk_elements and max_shard_bytes must be positive");
  std::set<std::string> names;
  for (const PlannedTensor& t : tensors) {
    if (!names.insert(t.name).second) return absl::InvalidArgumentError(absl::StrCat("duplicate tensor '", t.name, "'"));
    for (int64_t d : t.shape)
      if (d < 0) return absl::InvalidArgumentError(absl::StrCat("tensor '", t.name, "' has a negative dimension"));
  }
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", ec.message()));

  const std::vector<Shard> shards = PlanShards(tensors, options.max_shard_bytes);
  WrittenCheckpoint out;
  json weight_map = json::object();
  for (size_t s = 0; s < shards.size(); ++s) {
    const std::string file = shards.size() == 1
                                 ? std::string("model.safetensors")
                                 : absl::StrFormat("model-%05d-of-%05d.safetensors", s + 1, shards.size());
    INTERNVL_RETURN_IF_ERROR(
        WriteShard((std::filesystem::path(dir) / file).string(), tensors, shards[s], fill, options, &out.file_bytes));
    out.files.push_back(file);
    out.total_bytes += shards[s].data_bytes;
    for (size_t i : shards[s].members) weight_map[tensors[i].name] = file;
  }
  const std::string index_path = (std::filesystem::path(dir) / "model.safetensors.index.json").string();
  if (shards.size() == 1) {
    // A stale index from an earlier sharded run would shadow model.safetensors.
    std::filesystem::remove(index_path, ec);
  } else {
    const json index = {{"metadata", {{"total_size", out.total_bytes}}}, {"weight_map", weight_map}};
    const std::string text = index.dump(2) + "\n";
    INTERNVL_RETURN_IF_ERROR(WriteFileAtomic(index_path, text));
    out.files.push_back("model.safetensors.index.json");
    out.file_bytes += text.size();
  }
  return out;
}

}  // namespace internvl::modelgen
