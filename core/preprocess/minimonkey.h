// MiniMonkey's multi-scale adaptive cropping (MSAC), as its official code
// does it (../shared/docs/MINIMONKEY.md section 2; Monkey project/mini_monkey
// demo.py `load_image` / `load_image2`, eval/internvl_chat.py):
//
//   scale A: InternVL's dynamic_preprocess over [a_min, a_max] tiles; its grid
//            (cA, rA) is the "target_aspect_ratio" SCM uses;
//   scale B: dynamic_preprocess2 over [b_min, b_max] with the candidates
//            filtered against A's grid (official rule: drop (c, r) only when
//            cA % c == 0 AND rA % r == 0; PaddleMIX/training rule: keep (c, r)
//            only when cA % c != 0 AND rA % r != 0), (1, 1) when none is left;
//   each scale appends its thumbnail (the whole image at 448^2) unless its
//   grid is 1x1; the two lists LA, LB are concatenated with the official
//   slices: demo order LB[:-1] + LA[:-1] + LB[-1:], eval order
//   LA[:-1] + LB[:-1] + LA[-1:] (taken literally: a 1x1 list loses its only
//   tile to [:-1] and gets it back from [-1:]).
//
// The result is ONE image of N tiles for the model (one <image>, 256 * N
// <IMG_CONTEXT> tokens). DynamicPreprocess and PlanTiles (tiling.h) do this
// when TilingOptions::minimonkey is set. Torch-free.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/preprocess/tiling.h"

namespace internvl::preprocess {

// "demo" / "eval"; "official" / "paddlemix". INVALID_ARGUMENT otherwise.
absl::StatusOr<MiniMonkeyOrder> ParseMiniMonkeyOrder(absl::string_view name);
absl::StatusOr<ScaleBRule> ParseScaleBRule(absl::string_view name);
const char* MiniMonkeyOrderName(MiniMonkeyOrder order);
const char* ScaleBRuleName(ScaleBRule rule);

// "A_MIN,A_MAX,B_MIN,B_MAX" (the CLI's --minimonkey-ranges) into `options`.
absl::Status ParseMiniMonkeyRanges(absl::string_view text, MiniMonkeyOptions* options);
// 1 <= min <= max for both scales, a tile size in range, N bounded
// (INVALID_ARGUMENT / RESOURCE_EXHAUSTED naming the value).
absl::Status ValidateMiniMonkeyOptions(const MiniMonkeyOptions& options);

// Scale B's candidates: CandidateGrids(b_min, b_max) minus those `rule`
// excludes for the prior grid `a` (in the official iteration order).
std::vector<TileGrid> ScaleBCandidates(int b_min, int b_max, TileGrid a, ScaleBRule rule);

// What MSAC does with a width x height image, from its header alone.
struct MiniMonkeyPlan {
  TilePlan a, b;
  // Tile labels in pixel_values order: "A<k>" / "B<k>" for grid tile k
  // (row-major), "TA" / "TB" for a scale's thumbnail.
  std::vector<std::string> order;
  int count() const { return static_cast<int>(order.size()); }
  // SCM's candidate block: the first a.grid.count() * 256 visual tokens.
  TileGrid target_aspect_ratio() const { return a.grid; }
};
MiniMonkeyPlan PlanMiniMonkey(int width, int height, const MiniMonkeyOptions& options);

// The tiles of one image in `plan.order`: tiles.count = N, tiles.grid = A's
// grid (the target aspect ratio), tiles.has_thumbnail = false (the
// thumbnail's place depends on the order: see plan.order).
struct MiniMonkeyTiles {
  MiniMonkeyPlan plan;
  Tiles tiles;
};
absl::StatusOr<MiniMonkeyTiles> MiniMonkeyPreprocess(const RgbImage& image, const MiniMonkeyOptions& options);

// DecodeImage + MiniMonkeyPreprocess.
absl::StatusOr<MiniMonkeyTiles> LoadMiniMonkeyTiles(absl::string_view bytes, const MiniMonkeyOptions& options,
                                                    const DecodeLimits& limits = DecodeLimits());

}  // namespace internvl::preprocess
