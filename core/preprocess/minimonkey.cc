#include "core/preprocess/minimonkey.h"

#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/preprocess/runtime.h"
#include "core/status.h"

namespace internvl::preprocess {
namespace {

// A tile of one scale's list (LA or LB): grid tile `index`, or the thumbnail.
struct TileRef {
  bool scale_a = true;
  bool thumbnail = false;
  int index = 0;
  std::string Label() const {
    const char* s = scale_a ? "A" : "B";
    return thumbnail ? absl::StrCat("T", s) : absl::StrCat(s, index);
  }
};

std::vector<TileRef> ScaleList(const TilePlan& plan, bool scale_a) {
  std::vector<TileRef> list;
  for (int k = 0; k < plan.grid.count(); ++k) list.push_back({scale_a, false, k});
  if (plan.has_thumbnail) list.push_back({scale_a, true, 0});
  return list;
}

// Python's list[:-1] and list[-1:].
std::vector<TileRef> AllButLast(const std::vector<TileRef>& v) {
  return v.empty() ? v : std::vector<TileRef>(v.begin(), v.end() - 1);
}
std::vector<TileRef> Last(const std::vector<TileRef>& v) {
  return v.empty() ? v : std::vector<TileRef>(v.end() - 1, v.end());
}

std::vector<TileRef> Concatenate(const MiniMonkeyPlan& plan, MiniMonkeyOrder order) {
  const std::vector<TileRef> la = ScaleList(plan.a, true), lb = ScaleList(plan.b, false);
  const std::vector<TileRef>& first = order == MiniMonkeyOrder::kDemo ? lb : la;
  const std::vector<TileRef>& second = order == MiniMonkeyOrder::kDemo ? la : lb;
  std::vector<TileRef> out = AllButLast(first);
  for (const TileRef& t : AllButLast(second)) out.push_back(t);
  for (const TileRef& t : Last(first)) out.push_back(t);
  return out;
}

TilePlan PlanWithGrid(TileGrid grid) {
  TilePlan p;
  p.grid = grid;
  p.has_thumbnail = grid.count() != 1;  // use_thumbnail=True in both official calls
  p.count = grid.count() + (p.has_thumbnail ? 1 : 0);
  return p;
}

}  // namespace

absl::StatusOr<MiniMonkeyOrder> ParseMiniMonkeyOrder(absl::string_view name) {
  if (name == "demo") return MiniMonkeyOrder::kDemo;
  if (name == "eval") return MiniMonkeyOrder::kEval;
  return absl::InvalidArgumentError(absl::StrCat("unknown MiniMonkey tile order '", name, "' (demo or eval)"));
}

absl::StatusOr<ScaleBRule> ParseScaleBRule(absl::string_view name) {
  if (name == "official") return ScaleBRule::kOfficial;
  if (name == "paddlemix") return ScaleBRule::kPaddleMix;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown MiniMonkey scale-B rule '", name, "' (official or paddlemix)"));
}

const char* MiniMonkeyOrderName(MiniMonkeyOrder order) { return order == MiniMonkeyOrder::kDemo ? "demo" : "eval"; }
const char* ScaleBRuleName(ScaleBRule rule) { return rule == ScaleBRule::kOfficial ? "official" : "paddlemix"; }

absl::Status ParseMiniMonkeyRanges(absl::string_view text, MiniMonkeyOptions* options) {
  const std::vector<absl::string_view> parts = absl::StrSplit(text, ',');
  int v[4];
  bool ok = parts.size() == 4;
  for (size_t i = 0; ok && i < 4; ++i) ok = absl::SimpleAtoi(parts[i], &v[i]);
  if (!ok)
    return absl::InvalidArgumentError(
        absl::StrCat("MiniMonkey ranges must be A_MIN,A_MAX,B_MIN,B_MAX (four integers), got '", text, "'"));
  MiniMonkeyOptions o = *options;
  o.a_min = v[0];
  o.a_max = v[1];
  o.b_min = v[2];
  o.b_max = v[3];
  INTERNVL_RETURN_IF_ERROR(ValidateMiniMonkeyOptions(o));
  *options = o;
  return absl::OkStatus();
}

absl::Status ValidateMiniMonkeyOptions(const MiniMonkeyOptions& o) {
  if (o.a_min < 1 || o.a_max < o.a_min || o.b_min < 1 || o.b_max < o.b_min)
    return absl::InvalidArgumentError(absl::StrCat("MiniMonkey ranges need 1 <= min <= max for both scales, got A ",
                                                   o.a_min, "..", o.a_max, ", B ", o.b_min, "..", o.b_max));
  // Each scale's tiles are allocated at once: the usual tiling bounds apply.
  for (int max_num : {o.a_max, o.b_max}) {
    TilingOptions t;
    t.max_num = max_num;
    t.image_size = o.image_size;
    INTERNVL_RETURN_IF_ERROR(ValidateTilingOptions(t));
  }
  return absl::OkStatus();
}

std::vector<TileGrid> ScaleBCandidates(int b_min, int b_max, TileGrid a, ScaleBRule rule) {
  std::vector<TileGrid> kept;
  for (const TileGrid& g : CandidateGrids(b_min, b_max)) {
    const bool cols_divide = a.cols % g.cols == 0, rows_divide = a.rows % g.rows == 0;
    const bool keep = rule == ScaleBRule::kOfficial ? !(cols_divide && rows_divide) : (!cols_divide && !rows_divide);
    if (keep) kept.push_back(g);
  }
  return kept;
}

MiniMonkeyPlan PlanMiniMonkey(int width, int height, const MiniMonkeyOptions& options) {
  MiniMonkeyPlan plan;
  TilingOptions a;
  a.min_num = options.a_min;
  a.max_num = options.a_max;
  a.image_size = options.image_size;
  a.use_thumbnail = true;
  plan.a = PlanTiles(width, height, a);
  // find_closest_aspect_ratio over the filtered list; an empty one gives (1, 1).
  plan.b = PlanWithGrid(FindClosestAspectRatio(
      width, height, ScaleBCandidates(options.b_min, options.b_max, plan.a.grid, options.rule), options.image_size));
  for (const TileRef& t : Concatenate(plan, options.order)) plan.order.push_back(t.Label());
  return plan;
}

absl::StatusOr<MiniMonkeyTiles> MiniMonkeyPreprocess(const RgbImage& image, const MiniMonkeyOptions& options) {
  INTERNVL_RETURN_IF_ERROR(ValidateMiniMonkeyOptions(options));
  if (image.width <= 0 || image.height <= 0)
    return absl::InvalidArgumentError(absl::StrCat("cannot tile an empty ", image.width, "x", image.height, " image"));
  MiniMonkeyTiles out;
  out.plan = PlanMiniMonkey(image.width, image.height, options);
  const int s = options.image_size;
  INTERNVL_ASSIGN_OR_RETURN(Tiles a, TileWithPlan(image, out.plan.a, s));
  // TB is the same resize of the same image as TA (bit-identical): computed
  // once when both scales have a thumbnail.
  TilePlan b_plan = out.plan.b;
  const bool share_thumbnail = b_plan.has_thumbnail && a.has_thumbnail;
  if (share_thumbnail) {
    b_plan.has_thumbnail = false;
    --b_plan.count;
  }
  INTERNVL_ASSIGN_OR_RETURN(Tiles b, TileWithPlan(image, b_plan, s));

  Tiles& tiles = out.tiles;
  tiles.size = s;
  tiles.grid = out.plan.a.grid;
  tiles.has_thumbnail = false;
  const std::vector<TileRef> order = Concatenate(out.plan, options.order);
  tiles.count = static_cast<int>(order.size());
  tiles.data = TakeImageBuffer(static_cast<size_t>(tiles.count) * tiles.tile_bytes());  // every byte copied below
  for (int i = 0; i < tiles.count; ++i) {
    const TileRef& t = order[i];
    const Tiles& from = (t.scale_a || (share_thumbnail && t.thumbnail)) ? a : b;
    const int k = t.thumbnail ? from.grid.count() : t.index;
    std::memcpy(tiles.data.data() + i * tiles.tile_bytes(), from.tile(k), tiles.tile_bytes());
  }
  return out;
}

absl::StatusOr<MiniMonkeyTiles> LoadMiniMonkeyTiles(absl::string_view bytes, const MiniMonkeyOptions& options,
                                                    const DecodeLimits& limits) {
  INTERNVL_RETURN_IF_ERROR(ValidateMiniMonkeyOptions(options));
  INTERNVL_ASSIGN_OR_RETURN(RgbImage image, DecodeImage(bytes, limits));
  return MiniMonkeyPreprocess(image, options);
}

}  // namespace internvl::preprocess
