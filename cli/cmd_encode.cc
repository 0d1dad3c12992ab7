// `internvl encode`: load_image + extract_feature on one image: writes
// pixel_values [N,3,S,S] float32 and vit_embeds [N,T,H] (the official
// extract_feature output) to a safetensors file and prints a one-line JSON
// summary on stdout.
#include <chrono>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "cli/args.h"
#include "cli/command.h"
#include "core/config.h"
#include "core/files.h"
#include "core/host_tensor.h"
#include "core/preprocess/tiling.h"
#include "core/safetensors.h"
#include "core/status.h"
#include "core/vision/vision_model.h"
#include "nlohmann/json.hpp"

namespace internvl {
// Defined in core/nn/torch_util.cc; declared here to keep torch headers out.
void SetTorchThreads(int n);
}  // namespace internvl

namespace internvl::cli {
namespace {

constexpr char kName[] = "encode";
constexpr char kSummary[] = "preprocess an image and run the vision encoder (extract_feature)";

const std::vector<FlagSpec>& Specs() {
  static const auto* specs = new std::vector<FlagSpec>{
      {"model", "model directory (config.json + safetensors)", true, false, ""},
      {"image", "input image (JPEG, PNG, WebP, BMP, GIF)", true, false, ""},
      {"out", "output .safetensors (pixel_values, vit_embeds)", true, false, ""},
      {"max-num", "maximum number of tiles (thumbnail not counted)", true, false, "12"},
      {"dtype", "compute dtype: fp32 or bf16", true, false, "bf16"},
      {"threads", "intra-op threads (0 = all cores)", true, false, "0"},
      {"device", "where the vision model runs: cpu, cuda or cuda:N", true, false, "cpu"},
      {"help", "show this help", false, false, ""},
  };
  return *specs;
}

absl::StatusOr<std::string> Encode(const Args& args) {
  INTERNVL_ASSIGN_OR_RETURN(std::string model_dir, args.Require("model"));
  INTERNVL_ASSIGN_OR_RETURN(std::string image_path, args.Require("image"));
  INTERNVL_ASSIGN_OR_RETURN(std::string out, args.Require("out"));
  INTERNVL_ASSIGN_OR_RETURN(int max_num, args.GetInt("max-num", 12));
  INTERNVL_ASSIGN_OR_RETURN(int threads, args.GetInt("threads", 0));
  SetTorchThreads(threads);
  INTERNVL_ASSIGN_OR_RETURN(InternVLConfig config, LoadInternVLConfig(model_dir));
  preprocess::TilingOptions tiling;
  tiling.max_num = max_num;
  tiling.image_size = config.image_size();
  // The official load_image always appends the thumbnail (use_thumbnail=True).
  tiling.use_thumbnail = true;
  INTERNVL_RETURN_IF_ERROR(preprocess::ValidateTilingOptions(tiling));
  INTERNVL_ASSIGN_OR_RETURN(std::string bytes, ReadFile(image_path));
  const auto t0 = std::chrono::steady_clock::now();
  INTERNVL_ASSIGN_OR_RETURN(preprocess::Tiles tiles, preprocess::LoadImageTiles(bytes, tiling));
  const int64_t n = tiles.count, s = tiles.size, c = preprocess::kRgbChannels;
  HostTensor pixels(DType::kF32, {n, c, s, s});
  preprocess::NormalizeTiles(tiles, pixels.data<float>());
  const auto t1 = std::chrono::steady_clock::now();
  INTERNVL_ASSIGN_OR_RETURN(auto model,
                            VisionModel::Load(model_dir, VisionOptions{.dtype = args.GetOr("dtype", "bf16"),
                                                                       .device = args.GetOr("device", "cpu")}));
  const auto t2 = std::chrono::steady_clock::now();
  INTERNVL_ASSIGN_OR_RETURN(HostTensor embeds, model->ExtractFeature(pixels));
  const auto t3 = std::chrono::steady_clock::now();
  INTERNVL_RETURN_IF_ERROR(WriteSafetensors(out, {pixels.Ref("pixel_values"), embeds.Ref("vit_embeds")}));
  auto ms = [](auto a, auto b) { return std::chrono::duration<double, std::milli>(b - a).count(); };
  nlohmann::ordered_json summary = {
      {"tiles", n},
      {"grid", {tiles.grid.cols, tiles.grid.rows}},
      {"shape", embeds.shape},
      {"pixel_values_shape", pixels.shape},
      {"dtype", DTypeName(embeds.dtype)},
      {"timings_ms", {{"preprocess", ms(t0, t1)}, {"load", ms(t1, t2)}, {"encode", ms(t2, t3)}}},
  };
  return summary.dump();
}

int Run(const std::vector<std::string>& argv) {
  int exit_code = 0;
  std::optional<Args> args = ParseCommandLine(kName, kSummary, Specs(), argv, &exit_code);
  if (!args) return exit_code;
  auto summary = Encode(*args);
  if (!summary.ok()) return ReportError(kName, summary.status());
  std::cout << *summary << "\n";
  return 0;
}

static const bool kRegistered = RegisterCommand({kName, kSummary, &Run});

}  // namespace
}  // namespace internvl::cli
