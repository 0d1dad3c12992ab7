// Small file utilities: whole-file reads with clear errors, read-only mmaps.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace internvl {

// Reads a whole file. NOT_FOUND if missing, INVALID_ARGUMENT if `max_bytes`
// is exceeded.
absl::StatusOr<std::string> ReadFile(const std::string& path,
                                     size_t max_bytes = size_t{1} << 32);

// Writes `data` to `path` atomically: temp file, fsync, rename, fsync of the
// folder. A crash at any moment leaves the old content or the new.
absl::Status WriteFileAtomic(const std::string& path, absl::string_view data);
// fsync of a directory (its entries: after a rename into it).
absl::Status SyncDir(const std::string& dir);

// Drops the whole pages inside [data, data + size) of a read-only file
// mapping from this process's resident set (the kernel's page cache keeps
// them; a later read faults them back in). Loaders call it once a tensor is
// copied out, so that loading a checkpoint does not hold the file's pages
// and the copies at once (the peak RSS of loading stays near the weights').
void ReleaseMappedPages(const void* data, size_t size);

// A read-only private mapping of a whole file. Pages are loaded lazily, so
// opening a multi-GB checkpoint costs nothing until tensors are touched.
class MappedFile {
 public:
  static absl::StatusOr<std::unique_ptr<MappedFile>> Open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile(std::string path, const uint8_t* data, size_t size)
      : path_(std::move(path)), data_(data), size_(size) {}
  std::string path_;
  const uint8_t* data_;
  size_t size_;
};

}  // namespace internvl
