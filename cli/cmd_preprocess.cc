// `internvl preprocess`: the official load_image (dynamic_preprocess +
// build_transform) on one image file; writes pixel_values [N,3,S,S] float32
// and tiles_u8 [N,S,S,3] uint8 to a safetensors file and prints a one-line
// JSON summary on stdout.
#include <cstdint>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cli/args.h"
#include "cli/chat_flags.h"
#include "cli/command.h"
#include "core/config.h"
#include "core/files.h"
#include "core/preprocess/image.h"
#include "core/preprocess/minimonkey.h"
#include "core/preprocess/tiling.h"
#include "core/safetensors.h"
#include "core/status.h"
#include "nlohmann/json.hpp"

namespace internvl::cli {
namespace {

constexpr char kName[] = "preprocess";
constexpr char kSummary[] = "decode an image and tile it as InternVL's load_image does";

const std::vector<FlagSpec>& Specs() {
  static const auto* specs = new std::vector<FlagSpec>{
      {"image", "input image (JPEG, PNG, WebP, BMP, GIF)", true, false, ""},
      {"out", "output .safetensors (pixel_values float32, tiles_u8 uint8)", true, false, ""},
      {"max-num", "maximum number of tiles (thumbnail not counted)", true, false, "12"},
      {"min-num", "minimum number of tiles", true, false, "1"},
      {"image-size", "tile side in pixels", true, false, std::to_string(kDefaultImageSize)},
      {"no-thumbnail", "do not append the whole-image thumbnail", false, false, ""},
      {"max-pixels", "refuse images with more pixels", true, false, std::to_string(preprocess::kDefaultMaxImagePixels)},
      {"minimonkey", "MiniMonkey's two-scale tiling (prints both grids and the tile order)", false, false, ""},
      {"minimonkey-order", "with --minimonkey: demo or eval", true, false, "demo"},
      {"minimonkey-ranges", "with --minimonkey: A_MIN,A_MAX,B_MIN,B_MAX", true, false, "4,12,3,7"},
      {"minimonkey-rule", "with --minimonkey: scale-B filter, official or paddlemix", true, false, "official"},
      {"help", "show this help", false, false, ""},
  };
  return *specs;
}

struct Request {
  std::string image;
  std::string out;
  preprocess::TilingOptions tiling;
  preprocess::DecodeLimits limits;
};

// Flag problems are usage errors (exit code 2).
absl::StatusOr<Request> ParseRequest(const Args& args) {
  Request r;
  INTERNVL_ASSIGN_OR_RETURN(r.image, args.Require("image"));
  INTERNVL_ASSIGN_OR_RETURN(r.out, args.Require("out"));
  preprocess::TilingOptions defaults;
  INTERNVL_ASSIGN_OR_RETURN(r.tiling.max_num, args.GetInt("max-num", defaults.max_num));
  INTERNVL_ASSIGN_OR_RETURN(r.tiling.min_num, args.GetInt("min-num", defaults.min_num));
  INTERNVL_ASSIGN_OR_RETURN(r.tiling.image_size, args.GetInt("image-size", defaults.image_size));
  r.tiling.use_thumbnail = !args.Has("no-thumbnail");
  INTERNVL_ASSIGN_OR_RETURN(double max_pixels, args.GetDouble("max-pixels", static_cast<double>(r.limits.max_pixels)));
  if (max_pixels < 1) return absl::InvalidArgumentError("--max-pixels must be positive");
  r.limits.max_pixels = static_cast<int64_t>(max_pixels);
  INTERNVL_ASSIGN_OR_RETURN(r.tiling.minimonkey, MiniMonkeyTilingFromArgs(args));
  if (args.Has("minimonkey") && !r.tiling.minimonkey) r.tiling.minimonkey = preprocess::MiniMonkeyOptions();
  if (r.tiling.minimonkey && !args.Has("minimonkey"))
    return absl::InvalidArgumentError(
        "--minimonkey-order, --minimonkey-ranges and --minimonkey-rule need --minimonkey");
  if (r.tiling.minimonkey) r.tiling.minimonkey->image_size = r.tiling.image_size;
  INTERNVL_RETURN_IF_ERROR(preprocess::ValidateTilingOptions(r.tiling));
  return r;
}

// Returns the JSON summary line.
absl::StatusOr<std::string> Preprocess(const Request& r) {
  INTERNVL_ASSIGN_OR_RETURN(std::string bytes, ReadFile(r.image));
  INTERNVL_ASSIGN_OR_RETURN(preprocess::RgbImage image, preprocess::DecodeImage(bytes, r.limits));
  INTERNVL_ASSIGN_OR_RETURN(preprocess::Tiles tiles, preprocess::DynamicPreprocess(image, r.tiling));
  const int64_t n = tiles.count, s = tiles.size, c = preprocess::kRgbChannels;
  std::vector<float> pixels(static_cast<size_t>(n * c * s * s));
  preprocess::NormalizeTiles(tiles, pixels.data());
  const std::vector<TensorRef> tensors = {
      {"pixel_values",
       DType::kF32,
       {n, c, s, s},
       absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(pixels.data()), pixels.size() * sizeof(float))},
      {"tiles_u8", DType::kU8, {n, s, s, c}, absl::Span<const uint8_t>(tiles.data)},
  };
  INTERNVL_RETURN_IF_ERROR(WriteSafetensors(r.out, tensors));
  nlohmann::ordered_json summary = {
      // keys in the documented order
      {"tiles", n},
      {"grid", {tiles.grid.cols, tiles.grid.rows}},
      {"shape", {n, c, s, s}},
      {"thumbnail", tiles.has_thumbnail},
      {"image", {image.width, image.height}},
  };
  if (r.tiling.minimonkey) {  // both scales and where each tile came from
    const preprocess::MiniMonkeyPlan plan = preprocess::PlanMiniMonkey(image.width, image.height, *r.tiling.minimonkey);
    summary["minimonkey"] = {
        {"grid_a", {plan.a.grid.cols, plan.a.grid.rows}},
        {"grid_b", {plan.b.grid.cols, plan.b.grid.rows}},
        {"order", preprocess::MiniMonkeyOrderName(r.tiling.minimonkey->order)},
        {"rule", preprocess::ScaleBRuleName(r.tiling.minimonkey->rule)},
        {"tiles", plan.order},
        {"target_aspect_ratio", {plan.a.grid.cols, plan.a.grid.rows}},
    };
  }
  return summary.dump();
}

int Run(const std::vector<std::string>& argv) {
  int exit_code = 0;
  std::optional<Args> args = ParseCommandLine(kName, kSummary, Specs(), argv, &exit_code);
  if (!args) return exit_code;
  absl::StatusOr<Request> request = ParseRequest(*args);
  if (!request.ok()) {
    ReportError(kName, request.status());
    std::cerr << Args::Usage(kName, kSummary, Specs());
    return 2;
  }
  auto summary = Preprocess(*request);
  if (!summary.ok()) return ReportError(kName, summary.status());
  std::cout << *summary << "\n";
  return 0;
}

static const bool kRegistered = RegisterCommand({kName, kSummary, &Run});

}  // namespace
}  // namespace internvl::cli
