// Parity of MiniMonkey's multi-scale adaptive cropping with its official code
// (fixtures/minimonkey/minimonkey_preprocess.json, MINIMONKEY.md section 2):
// for every image and parameter set, the candidate lists and exclusions, both
// grids, every tile's uint8 sha256 (exact) and normalised sums, both
// concatenation orders, N and the <IMG_CONTEXT> count; plus the PaddleMIX
// variant of the scale-B filter.
#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "core/files.h"
#include "core/hub/digest.h"
#include "core/preprocess/minimonkey.h"
#include "core/testing/fixtures.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/pixel_parity.h"

namespace internvl::preprocess {
namespace {

using json = nlohmann::json;

std::vector<std::pair<int, int>> Pairs(const std::vector<TileGrid>& grids) {
  std::vector<std::pair<int, int>> out;
  for (const TileGrid& g : grids) out.emplace_back(g.cols, g.rows);
  return out;
}
std::vector<std::pair<int, int>> Pairs(const json& j) {
  std::vector<std::pair<int, int>> out;
  for (const json& p : j) out.emplace_back(p[0].get<int>(), p[1].get<int>());
  return out;
}

MiniMonkeyOptions Options(const json& params, MiniMonkeyOrder order) {
  MiniMonkeyOptions o;
  o.a_min = params["min1"];
  o.a_max = params["max1"];
  o.b_min = params["min2"];
  o.b_max = params["max2"];
  o.order = order;
  return o;
}

// The tile's uint8 bytes: per-channel sums, sha256, and per-channel sums of
// the normalised float32 values (NormalizeTilesU8, summed in double).
struct TileCheck {
  std::vector<int64_t> u8_sum = {0, 0, 0};
  std::vector<double> norm_sum = {0, 0, 0};
  std::string sha256;
};
TileCheck Check(const uint8_t* tile, int size) {
  TileCheck c;
  const size_t plane = static_cast<size_t>(size) * size;
  c.sha256 = hub::Sha256Hex(absl::string_view(reinterpret_cast<const char*>(tile), plane * kRgbChannels));
  for (size_t i = 0; i < plane; ++i)
    for (int ch = 0; ch < kRgbChannels; ++ch) c.u8_sum[ch] += tile[kRgbChannels * i + ch];
  std::vector<float> norm(plane * kRgbChannels);
  NormalizeTilesU8(tile, 1, size, norm.data());
  for (int ch = 0; ch < kRgbChannels; ++ch)
    for (size_t i = 0; i < plane; ++i) c.norm_sum[ch] += norm[ch * plane + i];
  return c;
}

TEST(MiniMonkeyPreprocessParity, EveryImageAndParameterSetMatchesTheOfficialCode) {
  INTERNVL_REQUIRE_FIXTURES(fixtures);
  const std::string dir = fixtures + "/minimonkey/";
  auto text = ReadFile(dir + "minimonkey_preprocess.json");
  ASSERT_TRUE(text.ok()) << text.status();
  const json ref = json::parse(*text);
  ASSERT_FALSE(ref["images"].empty());
  int cases = 0, tiles_checked = 0;
  for (const auto& [name, image_ref] : ref["images"].items()) {
    const RgbImage image = ::internvl::testing::LoadPng(dir + image_ref["file"].get<std::string>());
    ASSERT_EQ(image.width, image_ref["size_wh"][0].get<int>()) << name;
    ASSERT_EQ(image.height, image_ref["size_wh"][1].get<int>()) << name;
    ASSERT_EQ(hub::Sha256Hex(absl::string_view(reinterpret_cast<const char*>(image.data.data()), image.data.size())),
              image_ref["rgb_u8_sha256"].get<std::string>())
        << name;
    for (const auto& [set, c] : image_ref["cases"].items()) {
      SCOPED_TRACE(absl::StrCat(name, " ", set));
      ++cases;
      const json& params = ref["param_sets"][set];
      const MiniMonkeyOptions demo = Options(params, MiniMonkeyOrder::kDemo);

      // Scale A: candidates, grid (the target aspect ratio), thumbnail.
      const json& a = c["scale_a"];
      EXPECT_EQ(Pairs(CandidateGrids(demo.a_min, demo.a_max)), Pairs(a["candidates_in_order"]));
      const MiniMonkeyPlan plan = PlanMiniMonkey(image.width, image.height, demo);
      EXPECT_EQ(plan.a.grid.cols, a["grid_cols_rows"][0].get<int>());
      EXPECT_EQ(plan.a.grid.rows, a["grid_cols_rows"][1].get<int>());
      EXPECT_EQ(plan.a.has_thumbnail, a["thumbnail_appended"].get<bool>());

      // Scale B: candidates before and after the official exclusion, grid.
      const json& b = c["scale_b"];
      EXPECT_EQ(Pairs(CandidateGrids(demo.b_min, demo.b_max)), Pairs(b["candidates_in_order"]));
      EXPECT_EQ(Pairs(ScaleBCandidates(demo.b_min, demo.b_max, plan.a.grid, ScaleBRule::kOfficial)),
                Pairs(b["candidates_after_exclusion"]));
      std::vector<std::pair<int, int>> excluded;
      const auto kept = Pairs(ScaleBCandidates(demo.b_min, demo.b_max, plan.a.grid, ScaleBRule::kOfficial));
      for (const auto& g : Pairs(CandidateGrids(demo.b_min, demo.b_max)))
        if (std::find(kept.begin(), kept.end(), g) == kept.end()) excluded.push_back(g);
      EXPECT_EQ(excluded, Pairs(b["excluded"]));
      EXPECT_EQ(plan.b.grid.cols, b["grid_cols_rows"][0].get<int>());
      EXPECT_EQ(plan.b.grid.rows, b["grid_cols_rows"][1].get<int>());
      EXPECT_EQ(plan.b.has_thumbnail, b["thumbnail_appended"].get<bool>());

      // The PaddleMIX / training rule (informational in the fixture: the grid
      // it would pick, (1, 1) when nothing is left).
      const json& pm = c["scale_b_paddlemix_and_rule"];
      MiniMonkeyOptions paddle = demo;
      paddle.rule = ScaleBRule::kPaddleMix;
      EXPECT_EQ(Pairs(ScaleBCandidates(demo.b_min, demo.b_max, plan.a.grid, ScaleBRule::kPaddleMix)),
                Pairs(pm["candidates_after_exclusion"]));
      const MiniMonkeyPlan paddle_plan = PlanMiniMonkey(image.width, image.height, paddle);
      EXPECT_EQ(paddle_plan.b.grid.cols, pm["grid_cols_rows"][0].get<int>());
      EXPECT_EQ(paddle_plan.b.grid.rows, pm["grid_cols_rows"][1].get<int>());
      EXPECT_EQ(paddle_plan.b.count, pm["n_tiles_incl_thumbnail"].get<int>());

      // Every tile by label, and both orders.
      std::map<std::string, const json*> by_label;
      for (const json& t : c["tiles"]) by_label[t["label"].get<std::string>()] = &t;
      for (MiniMonkeyOrder order : {MiniMonkeyOrder::kDemo, MiniMonkeyOrder::kEval}) {
        SCOPED_TRACE(MiniMonkeyOrderName(order));
        auto tiles = MiniMonkeyPreprocess(image, Options(params, order));
        ASSERT_TRUE(tiles.ok()) << tiles.status();
        const json& expected_order = c[order == MiniMonkeyOrder::kDemo ? "order_demo" : "order_eval"];
        EXPECT_EQ(tiles->plan.order, expected_order.get<std::vector<std::string>>());
        ASSERT_EQ(tiles->tiles.count, c["n_tiles_total"].get<int>());
        EXPECT_EQ(std::vector<int>{tiles->tiles.count}, c["num_patches_list"].get<std::vector<int>>());
        EXPECT_EQ(256 * tiles->tiles.count, c["img_context_tokens"].get<int>());
        EXPECT_EQ(tiles->tiles.grid, plan.a.grid);
        for (int i = 0; i < tiles->tiles.count; ++i) {
          const std::string& label = tiles->plan.order[i];
          ASSERT_TRUE(by_label.count(label)) << label;
          const json& t = *by_label[label];
          const TileCheck got = Check(tiles->tiles.tile(i), tiles->tiles.size);
          EXPECT_EQ(got.sha256, t["u8_sha256"].get<std::string>()) << label;
          EXPECT_EQ(got.u8_sum, t["u8_sum_rgb"].get<std::vector<int64_t>>()) << label;
          for (int ch = 0; ch < kRgbChannels; ++ch)
            EXPECT_NEAR(got.norm_sum[ch], t["norm_sum_rgb"][ch].get<double>(), 1e-2) << label << " channel " << ch;
          ++tiles_checked;
        }
      }

      // SCM's view of the input: H = cA * rA * 256 and its candidate block.
      const json& scm = c["scm"];
      EXPECT_EQ(plan.target_aspect_ratio().count() * 256, scm["high_token_H"].get<int>());
      for (MiniMonkeyOrder order : {MiniMonkeyOrder::kDemo, MiniMonkeyOrder::kEval}) {
        const MiniMonkeyPlan p = PlanMiniMonkey(image.width, image.height, Options(params, order));
        const std::vector<std::string> block(p.order.begin(), p.order.begin() + p.a.grid.count());
        EXPECT_EQ(block, scm[order == MiniMonkeyOrder::kDemo ? "candidate_block_labels_demo_order"
                                                             : "candidate_block_labels_eval_order"]
                             .get<std::vector<std::string>>());
      }
    }
  }
  EXPECT_GE(cases, 15);
  RecordProperty("tiles_checked", tiles_checked);
}

TEST(MiniMonkeyPreprocess, RangesAndNamesAreParsedAndChecked) {
  MiniMonkeyOptions o;
  ASSERT_TRUE(ParseMiniMonkeyRanges("3,9,1,4", &o).ok());
  EXPECT_EQ(o.a_min, 3);
  EXPECT_EQ(o.a_max, 9);
  EXPECT_EQ(o.b_min, 1);
  EXPECT_EQ(o.b_max, 4);
  for (const char* bad : {"", "1,2,3", "1,2,3,4,5", "a,2,3,4", "0,2,1,1", "5,4,1,1", "1,2,3,2", "1,100000,1,2"}) {
    MiniMonkeyOptions before = o;
    EXPECT_FALSE(ParseMiniMonkeyRanges(bad, &o).ok()) << bad;
    EXPECT_EQ(o.a_max, before.a_max) << "a refused range must leave the options as they were";
  }
  EXPECT_TRUE(ParseMiniMonkeyOrder("eval").ok());
  EXPECT_FALSE(ParseMiniMonkeyOrder("Eval").ok());
  EXPECT_TRUE(ParseScaleBRule("paddlemix").ok());
  EXPECT_FALSE(ParseScaleBRule("and").ok());
}

// The literal slices on a 1x1 scale: eval_docvqa on 448x448 gives A = (1, 1)
// with no thumbnail, so LA[:-1] is empty and LA[-1:] is A0.
TEST(MiniMonkeyPreprocess, OneByOneScaleIsSlicedLiterally) {
  MiniMonkeyOptions o;
  ASSERT_TRUE(ParseMiniMonkeyRanges("1,24,1,8", &o).ok());
  o.order = MiniMonkeyOrder::kEval;
  const MiniMonkeyPlan p = PlanMiniMonkey(448, 448, o);
  ASSERT_EQ(p.a.grid, (TileGrid{1, 1}));
  EXPECT_EQ(p.order, (std::vector<std::string>{"B0", "B1", "B2", "B3", "A0"}));
  o.order = MiniMonkeyOrder::kDemo;
  // Demo order LB[:-1] + LA[:-1] + LB[-1:]: A's only tile is sliced away.
  EXPECT_EQ(PlanMiniMonkey(448, 448, o).order, (std::vector<std::string>{"B0", "B1", "B2", "B3", "TB"}));
}

}  // namespace
}  // namespace internvl::preprocess
