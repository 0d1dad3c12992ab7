#include "core/preprocess/tiling.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <optional>

#include "absl/strings/str_cat.h"
#include "core/preprocess/jpeg.h"
#include "core/preprocess/minimonkey.h"
#include "core/preprocess/resize.h"
#include "core/preprocess/runtime.h"
#include "core/status.h"

namespace internvl::preprocess {
namespace {

// Rows per parallel task (resize passes, normalisation): enough work to
// amortise handing it out, small enough to balance 448-row tiles over threads.
constexpr int kRowsPerTask = 64;

int CeilDiv(int a, int b) { return (a + b - 1) / b; }

// --- CPython set iteration order (for the stable sort's tie order) ---------
// The official code builds the candidates as a Python `set` of (i, j) tuples
// and sorts by i * j; sorted() is stable, so equal products keep the set's
// iteration order, i.e. slot order in CPython's open-addressing table. Small
// int tuples hash deterministically (no hash randomisation for ints/tuples),
// so the order is a pure function of the insertions; we replay them.

// Objects/tupleobject.c tuplehash (CPython >= 3.8, 64-bit: xxHash-style).
uint64_t PyTupleHash2(int64_t a, int64_t b) {
  constexpr uint64_t kPrime1 = 11400714785074694791ULL;
  constexpr uint64_t kPrime2 = 14029467366897019727ULL;
  constexpr uint64_t kPrime5 = 2870177450012600261ULL;
  uint64_t acc = kPrime5;
  for (int64_t item : {a, b}) {
    const uint64_t lane = static_cast<uint64_t>(item);  // hash(small int) == int
    acc += lane * kPrime2;
    acc = (acc << 31) | (acc >> 33);
    acc *= kPrime1;
  }
  acc += 2 ^ (kPrime5 ^ 3527539UL);
  if (acc == static_cast<uint64_t>(-1)) return 1546275796;
  return acc;
}

// Objects/setobject.c: table of PySet_MINSIZE (8) slots, LINEAR_PROBES (9)
// linear probes then perturbed probing (PERTURB_SHIFT 5), resize to the
// smallest power of two > used * 4 once fill * 5 >= mask * 3.
class PySetEmulation {
 public:
  void Add(TileGrid key) {
    const uint64_t hash = PyTupleHash2(key.cols, key.rows);
    size_t mask = slots_.size() - 1;
    size_t i = hash & mask;
    uint64_t perturb = hash;
    while (true) {
      const size_t probes = (i + kLinearProbes <= mask) ? kLinearProbes : 0;
      for (size_t p = 0; p <= probes; ++p) {
        Slot& s = slots_[i + p];
        if (!s.used) {
          s = {true, hash, key};
          ++used_;
          if (used_ * 5 >= mask * 3) Resize(used_ * 4);
          return;
        }
        if (s.hash == hash && s.key == key) return;  // already present
      }
      perturb >>= kPerturbShift;
      i = (i * 5 + 1 + perturb) & mask;
    }
  }
  std::vector<TileGrid> InIterationOrder() const {
    std::vector<TileGrid> out;
    for (const Slot& s : slots_)
      if (s.used) out.push_back(s.key);
    return out;
  }

 private:
  static constexpr size_t kMinSize = 8;
  static constexpr size_t kLinearProbes = 9;
  static constexpr int kPerturbShift = 5;
  struct Slot {
    bool used = false;
    uint64_t hash = 0;
    TileGrid key;
  };
  // set_table_resize + set_insert_clean (no dummies: we never delete).
  void Resize(size_t min_used) {
    size_t new_size = kMinSize;
    while (new_size <= min_used) new_size <<= 1;
    std::vector<Slot> old;
    old.swap(slots_);
    slots_.assign(new_size, Slot());
    const size_t mask = new_size - 1;
    for (const Slot& s : old) {
      if (!s.used) continue;
      size_t i = s.hash & mask;
      uint64_t perturb = s.hash;
      while (true) {
        size_t target = SIZE_MAX;
        if (!slots_[i].used) {
          target = i;
        } else if (i + kLinearProbes <= mask) {
          for (size_t j = 1; j <= kLinearProbes; ++j)
            if (!slots_[i + j].used) {
              target = i + j;
              break;
            }
        }
        if (target != SIZE_MAX) {
          slots_[target] = s;
          break;
        }
        perturb >>= kPerturbShift;
        i = (i * 5 + 1 + perturb) & mask;
      }
    }
  }
  std::vector<Slot> slots_ = std::vector<Slot>(kMinSize);
  size_t used_ = 0;
};

}  // namespace

std::vector<TileGrid> CandidateGrids(int min_num, int max_num) {
  PySetEmulation set;
  for (int n = min_num; n <= max_num; ++n)
    for (int i = 1; i <= n; ++i)
      for (int j = 1; j <= n; ++j)
        if (i * j <= max_num && i * j >= min_num) set.Add({i, j});
  std::vector<TileGrid> grids = set.InIterationOrder();
  std::stable_sort(grids.begin(), grids.end(),
                   [](const TileGrid& a, const TileGrid& b) { return a.count() < b.count(); });
  return grids;
}

TileGrid FindClosestAspectRatio(int width, int height, const std::vector<TileGrid>& candidates, int image_size) {
  // Python floats are doubles; the same expressions give the same values.
  const double aspect_ratio = static_cast<double>(width) / height;
  const double area = static_cast<double>(width) * height;
  double best_diff = std::numeric_limits<double>::infinity();
  TileGrid best{1, 1};
  for (const TileGrid& g : candidates) {
    const double target = static_cast<double>(g.cols) / g.rows;
    const double diff = std::abs(aspect_ratio - target);
    if (diff < best_diff) {
      best_diff = diff;
      best = g;
    } else if (diff == best_diff) {
      // The tie rule: a larger grid wins only if the image has enough pixels
      // to fill more than half of it.
      if (area > 0.5 * image_size * image_size * g.cols * g.rows) best = g;
    }
  }
  return best;
}

absl::Status ValidateTilingOptions(const TilingOptions& options) {
  if (options.min_num < 1 || options.max_num < options.min_num)
    return absl::InvalidArgumentError(absl::StrCat("tiling needs 1 <= min_num <= max_num, got min_num ",
                                                   options.min_num, ", max_num ", options.max_num));
  if (options.image_size <= 0 || options.image_size > kMaxTileSize)
    return absl::InvalidArgumentError(
        absl::StrCat("tile size must be in [1, ", kMaxTileSize, "], got ", options.image_size));
  // The tiles' bytes (grid + thumbnail) are allocated at once: bound them.
  const int64_t side = options.image_size;
  const int64_t bytes = (static_cast<int64_t>(options.max_num) + 1) * side * side * kRgbChannels;
  if (bytes > kMaxTileBytes)
    return absl::ResourceExhaustedError(absl::StrCat("max_num ", options.max_num, " tiles of ", side, "x", side,
                                                     " would take ", bytes, " bytes, over the limit of ",
                                                     kMaxTileBytes));
  if (options.minimonkey) return ValidateMiniMonkeyOptions(*options.minimonkey);
  return absl::OkStatus();
}

TilePlan PlanTiles(int width, int height, const TilingOptions& options) {
  if (options.minimonkey) {
    const MiniMonkeyPlan mm = PlanMiniMonkey(width, height, *options.minimonkey);
    return TilePlan{mm.a.grid, false, mm.count()};
  }
  TilePlan plan;
  plan.grid =
      FindClosestAspectRatio(width, height, CandidateGrids(options.min_num, options.max_num), options.image_size);
  plan.has_thumbnail = options.use_thumbnail && plan.grid.count() != 1;
  plan.count = plan.grid.count() + (plan.has_thumbnail ? 1 : 0);
  return plan;
}

absl::StatusOr<Tiles> DynamicPreprocess(const RgbImage& image, const TilingOptions& options) {
  INTERNVL_RETURN_IF_ERROR(ValidateTilingOptions(options));
  if (image.width <= 0 || image.height <= 0)
    return absl::InvalidArgumentError(absl::StrCat("cannot tile an empty ", image.width, "x", image.height, " image"));
  if (options.minimonkey) {
    INTERNVL_ASSIGN_OR_RETURN(MiniMonkeyTiles mm, MiniMonkeyPreprocess(image, *options.minimonkey));
    return std::move(mm.tiles);
  }
  return TileWithPlan(image, PlanTiles(image.width, image.height, options), options.image_size);
}

namespace {

absl::Status CheckPlan(const TilePlan& plan, int image_size) {
  if (image_size <= 0 || image_size > kMaxTileSize || plan.grid.cols < 1 || plan.grid.rows < 1 ||
      plan.count != plan.grid.count() + (plan.has_thumbnail ? 1 : 0) ||
      static_cast<int64_t>(plan.count) * image_size * image_size * kRgbChannels > kMaxTileBytes)
    return absl::InvalidArgumentError(absl::StrCat("bad tile plan: ", plan.grid.cols, "x", plan.grid.rows, " grid, ",
                                                   plan.count, " tiles of ", image_size, " px"));
  return absl::OkStatus();
}

// One image's tiling: both resizes (grid and thumbnail) read the same image.
// Their horizontal passes are split into tasks of kRowsPerTask intermediate
// rows, ordered by the last input row each reads (so a decode that delivers
// rows top-down can feed them as it goes); the vertical passes then write
// straight into the tiles (no resized image, no crop copies). The tile bytes
// equal cropping Pillow's resized image.
class TileJob {
 public:
  TileJob(int width, int height, const TilePlan& plan, int image_size)
      : s_(image_size),
        grid_resize_(width, height, image_size * plan.grid.cols, image_size * plan.grid.rows),
        grid_rows_(grid_resize_.intermediate_bytes()) {
    tiles_.size = image_size;
    tiles_.grid = plan.grid;
    tiles_.has_thumbnail = plan.has_thumbnail;
    tiles_.count = plan.count;
    if (plan.has_thumbnail) {
      thumb_resize_.emplace(width, height, image_size, image_size);
      thumb_rows_.emplace(thumb_resize_->intermediate_bytes());
    }
    AddTasks(grid_resize_, grid_rows_.data());
    if (thumb_resize_) AddTasks(*thumb_resize_, thumb_rows_->data());
    std::stable_sort(tasks_.begin(), tasks_.end(),
                     [](const Task& a, const Task& b) { return a.last_input_row < b.last_input_row; });
  }

  int horizontal_tasks() const { return static_cast<int>(tasks_.size()); }
  // The input rows task t needs: [0, needed_rows(t)).
  int needed_rows(int t) const { return tasks_[t].last_input_row + 1; }
  void Horizontal(const uint8_t* pixels, int t) const {
    const Task& task = tasks_[t];
    task.resize->Horizontal(pixels, task.begin, task.end, task.out);
  }

  // The vertical passes into the tiles, on up to the runtime's threads.
  Tiles Finish(const uint8_t* pixels) {
    tiles_.data = TakeImageBuffer(tiles_.count * tiles_.tile_bytes());  // every byte written below
    const int blocks = tiles_.grid.count();
    // Tile k = (row k / cols, col k % cols), row-major; the thumbnail last.
    const size_t tile_stride = static_cast<size_t>(s_) * kRgbChannels;
    const int slices = CeilDiv(s_, kRowsPerTask);
    ParallelFor(tiles_.count * slices, [&](int i) {
      const int k = i / slices;
      const int y_begin = (i % slices) * kRowsPerTask;
      const int y_end = std::min(s_, y_begin + kRowsPerTask);
      uint8_t* dst = tiles_.data.data() + k * tiles_.tile_bytes() + y_begin * tile_stride;
      if (k < blocks) {
        const int x0 = (k % tiles_.grid.cols) * s_;
        const int y0 = (k / tiles_.grid.cols) * s_;
        grid_resize_.Vertical(pixels, grid_rows_.data(), x0, x0 + s_, y0 + y_begin, y0 + y_end, dst, tile_stride);
      } else {
        thumb_resize_->Vertical(pixels, thumb_rows_->data(), 0, s_, y_begin, y_end, dst, tile_stride);
      }
    });
    return std::move(tiles_);
  }

 private:
  struct Task {
    const PilBicubicResize* resize;
    int begin, end;  // intermediate rows
    uint8_t* out;
    int last_input_row;
  };
  void AddTasks(const PilBicubicResize& resize, uint8_t* out) {
    for (int begin = 0; begin < resize.intermediate_rows(); begin += kRowsPerTask) {
      const int end = std::min(resize.intermediate_rows(), begin + kRowsPerTask);
      tasks_.push_back(Task{&resize, begin, end, out, resize.input_row(end - 1)});
    }
  }

  const int s_;
  Tiles tiles_;
  const PilBicubicResize grid_resize_;
  std::optional<PilBicubicResize> thumb_resize_;
  const ScratchBuffer grid_rows_;
  std::optional<ScratchBuffer> thumb_rows_;
  std::vector<Task> tasks_;
};

#ifndef INTERNVL_NO_MEDIA
// LoadImageTiles for the JPEGs libjpeg decodes directly (jpeg.h): the
// horizontal passes run on the other threads while the decode delivers rows
// (the decode is serial: about half of the preprocessing), then the decoding
// thread joins them. nullopt when the JPEG is of another kind.
absl::StatusOr<std::optional<Tiles>> StreamJpegTiles(absl::string_view bytes, const ImageHeader& header,
                                                     const TilePlan& plan, int image_size) {
  INTERNVL_RETURN_IF_ERROR(CheckPlan(plan, image_size));
  const int w = header.width, h = header.height;
  TileJob job(w, h, plan, image_size);
  const ScratchBuffer pixels(static_cast<size_t>(w) * h * kRgbChannels);
  std::atomic<int> ready{0};         // input rows decoded so far
  std::atomic<bool> stopped{false};  // the decode failed or declined
  std::atomic<int> next_task{0};
  absl::StatusOr<bool> decoded = false;
  ParallelFor(GetPreprocessRuntime().threads, [&](int i) {
    if (i == 0) {
      decoded = internal::DecodeJpegRgb(bytes, w, h, pixels.data(), [&](int rows) {
        ready.store(rows, std::memory_order_release);
        ready.notify_all();
      });
      if (!decoded.ok() || !*decoded) {
        stopped.store(true);
        ready.store(h, std::memory_order_release);
        ready.notify_all();
        return;
      }
    }
    for (int t = next_task.fetch_add(1); t < job.horizontal_tasks(); t = next_task.fetch_add(1)) {
      for (int r = ready.load(std::memory_order_acquire); r < job.needed_rows(t);
           r = ready.load(std::memory_order_acquire)) {
        ready.wait(r, std::memory_order_acquire);
      }
      if (stopped.load()) return;
      job.Horizontal(pixels.data(), t);
    }
  });
  if (!decoded.ok()) return decoded.status();
  if (!*decoded) return std::nullopt;
  return job.Finish(pixels.data());
}
#endif

}  // namespace

absl::StatusOr<Tiles> TileWithPlan(const RgbImage& image, const TilePlan& plan, int image_size) {
  if (image.width <= 0 || image.height <= 0 ||
      image.data.size() != static_cast<size_t>(image.width) * image.height * kRgbChannels)
    return absl::InvalidArgumentError(
        absl::StrCat("cannot tile an empty or malformed ", image.width, "x", image.height, " image"));
  INTERNVL_RETURN_IF_ERROR(CheckPlan(plan, image_size));
  TileJob job(image.width, image.height, plan, image_size);
  ParallelFor(job.horizontal_tasks(), [&](int t) { job.Horizontal(image.data.data(), t); });
  return job.Finish(image.data.data());
}

absl::StatusOr<Tiles> LoadImageTiles(absl::string_view bytes, const TilingOptions& options,
                                     const DecodeLimits& limits) {
  INTERNVL_RETURN_IF_ERROR(ValidateTilingOptions(options));
  INTERNVL_ASSIGN_OR_RETURN(const ImageHeader header, internal::CheckedImageHeader(bytes, limits));
#ifndef INTERNVL_NO_MEDIA
  if (!options.minimonkey && header.format == ImageFormat::kJpeg) {
    INTERNVL_ASSIGN_OR_RETURN(
        std::optional<Tiles> tiles,
        StreamJpegTiles(bytes, header, PlanTiles(header.width, header.height, options), options.image_size));
    if (tiles) return std::move(*tiles);
  }
#endif
  INTERNVL_ASSIGN_OR_RETURN(RgbImage image, internal::DecodeCheckedImage(bytes, header, limits));
  return DynamicPreprocess(image, options);
}

void NormalizeTilesU8(const uint8_t* tiles_hwc, int count, int size, float* out) {
  // ToTensor: float(u8) / 255; Normalize: (x - mean) / std, each op rounded to
  // float32 as torch does. Only 256 inputs per channel exist, so a table of
  // the exact results is both bit-identical and the fastest formulation.
  float lut[kRgbChannels][256];
  for (int c = 0; c < kRgbChannels; ++c)
    for (int v = 0; v < 256; ++v) {
      const float x = static_cast<float>(v) / 255.0f;
      lut[c][v] = (x - kImageNetMean[c]) / kImageNetStd[c];
    }
  const size_t plane = static_cast<size_t>(size) * size;
  const int slices = CeilDiv(size, kRowsPerTask);
  ParallelFor(count * slices, [&](int task) {
    const int n = task / slices;
    const size_t begin = static_cast<size_t>(task % slices) * kRowsPerTask * size;
    const size_t end = std::min(plane, begin + static_cast<size_t>(kRowsPerTask) * size);
    const uint8_t* src = tiles_hwc + n * plane * kRgbChannels;
    float* r = out + n * plane * kRgbChannels;
    float* g = r + plane;
    float* b = g + plane;
    for (size_t i = begin; i < end; ++i) {
      r[i] = lut[0][src[3 * i + 0]];
      g[i] = lut[1][src[3 * i + 1]];
      b[i] = lut[2][src[3 * i + 2]];
    }
  });
}

void NormalizeTiles(const Tiles& tiles, float* out) {
  NormalizeTilesU8(tiles.data.data(), tiles.count, tiles.size, out);
}

}  // namespace internvl::preprocess
