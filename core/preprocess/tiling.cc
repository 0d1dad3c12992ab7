#include "core/preprocess/tiling.h"

#include <algorithm>
#include <cstring>
#include <optional>

#include "absl/strings/str_cat.h"
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

absl::StatusOr<Tiles> TileWithPlan(const RgbImage& image, const TilePlan& plan, int image_size) {
  if (image.width <= 0 || image.height <= 0 ||
      image.data.size() != static_cast<size_t>(image.width) * image.height * kRgbChannels)
    return absl::InvalidArgumentError(
        absl::StrCat("cannot tile an empty or malformed ", image.width, "x", image.height, " image"));
  if (image_size <= 0 || image_size > kMaxTileSize || plan.grid.cols < 1 || plan.grid.rows < 1 ||
      plan.count != plan.grid.count() + (plan.has_thumbnail ? 1 : 0) ||
      static_cast<int64_t>(plan.count) * image_size * image_size * kRgbChannels > kMaxTileBytes)
    return absl::InvalidArgumentError(absl::StrCat("bad tile plan: ", plan.grid.cols, "x", plan.grid.rows, " grid, ",
                                                   plan.count, " tiles of ", image_size, " px"));
  const int s = image_size;
  Tiles tiles;
  tiles.size = s;
  tiles.grid = plan.grid;
  tiles.has_thumbnail = plan.has_thumbnail;
  tiles.count = plan.count;
  const int blocks = tiles.grid.count();
  tiles.data.resize(tiles.count * tiles.tile_bytes());

  // Both resizes (grid and thumbnail) read the same image: run their
  // horizontal passes as one parallel phase, then their vertical passes as a
  // second one that writes straight into the tiles (no resized image, no crop
  // copies). The tile bytes equal cropping Pillow's resized image.
  const PilBicubicResize grid_resize(image.width, image.height, s * tiles.grid.cols, s * tiles.grid.rows);
  std::optional<PilBicubicResize> thumb_resize;
  if (tiles.has_thumbnail) thumb_resize.emplace(image.width, image.height, s, s);
  const ScratchBuffer grid_rows(grid_resize.intermediate_bytes());
  const ScratchBuffer thumb_rows(thumb_resize ? thumb_resize->intermediate_bytes() : 0);

  const int grid_tasks = CeilDiv(grid_resize.intermediate_rows(), kRowsPerTask);
  const int thumb_tasks = thumb_resize ? CeilDiv(thumb_resize->intermediate_rows(), kRowsPerTask) : 0;
  ParallelFor(grid_tasks + thumb_tasks, [&](int i) {
    const bool grid = i < grid_tasks;
    const PilBicubicResize& resize = grid ? grid_resize : *thumb_resize;
    const int begin = (grid ? i : i - grid_tasks) * kRowsPerTask;
    resize.Horizontal(image, begin, std::min(resize.intermediate_rows(), begin + kRowsPerTask),
                      grid ? grid_rows.data() : thumb_rows.data());
  });

  // Tile k = (row k / cols, col k % cols), row-major; the thumbnail last.
  const size_t tile_stride = static_cast<size_t>(s) * kRgbChannels;
  const int slices = CeilDiv(s, kRowsPerTask);
  ParallelFor(tiles.count * slices, [&](int i) {
    const int k = i / slices;
    const int y_begin = (i % slices) * kRowsPerTask;
    const int y_end = std::min(s, y_begin + kRowsPerTask);
    uint8_t* dst = tiles.data.data() + k * tiles.tile_bytes() + y_begin * tile_stride;
    if (k < blocks) {
      const int x0 = (k % tiles.grid.cols) * s;
      const int y0 = (k / tiles.grid.cols) * s;
      grid_resize.Vertical(image, grid_rows.data(), x0, x0 + s, y0 + y_begin, y0 + y_end, dst, tile_stride);
    } else {
      thumb_resize->Vertical(image, thumb_rows.data(), 0, s, y_begin, y_end, dst, tile_stride);
    }
  });
  return tiles;
}

absl::StatusOr<Tiles> LoadImageTiles(absl::string_view bytes, const TilingOptions& options,
                                     const DecodeLimits& limits) {
  INTERNVL_RETURN_IF_ERROR(ValidateTilingOptions(options));
  INTERNVL_ASSIGN_OR_RETURN(RgbImage image, DecodeImage(bytes, limits));
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
