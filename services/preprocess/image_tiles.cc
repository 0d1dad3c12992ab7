#include "services/preprocess/image_tiles.h"

#include "absl/strings/str_cat.h"
#include "core/preprocess/minimonkey.h"
#include "core/status.h"
#include "services/common/sha256.h"

namespace internvl::services {

absl::StatusOr<preprocess::MiniMonkeyOptions> ResolveMiniMonkey(const v1::MiniMonkeyTiling& settings,
                                                                const ImageLimits& limits) {
  preprocess::MiniMonkeyOptions o;
  if (settings.a_min() != 0) o.a_min = settings.a_min();
  if (settings.a_max() != 0) o.a_max = settings.a_max();
  if (settings.b_min() != 0) o.b_min = settings.b_min();
  if (settings.b_max() != 0) o.b_max = settings.b_max();
  if (!settings.order().empty()) {
    INTERNVL_ASSIGN_OR_RETURN(o.order, preprocess::ParseMiniMonkeyOrder(settings.order()));
  }
  if (!settings.rule().empty()) {
    INTERNVL_ASSIGN_OR_RETURN(o.rule, preprocess::ParseScaleBRule(settings.rule()));
  }
  o.image_size = limits.image_size;
  // Both scales' grids make one image's tiles (plus one thumbnail, as the
  // usual max_num + 1): their maxima together are held to --max-tiles.
  if (o.a_max + o.b_max > limits.max_tiles)
    return absl::ResourceExhaustedError(absl::StrCat("MiniMonkey ranges give up to ", o.a_max, " + ", o.b_max,
                                                     " tiles, over this server's limit of ", limits.max_tiles,
                                                     " (--max-tiles)"));
  INTERNVL_RETURN_IF_ERROR(preprocess::ValidateMiniMonkeyOptions(o));
  return o;
}

v1::MiniMonkeyTiling MiniMonkeyToProto(const preprocess::MiniMonkeyOptions& o) {
  v1::MiniMonkeyTiling p;
  p.set_a_min(o.a_min);
  p.set_a_max(o.a_max);
  p.set_b_min(o.b_min);
  p.set_b_max(o.b_max);
  p.set_order(preprocess::MiniMonkeyOrderName(o.order));
  p.set_rule(preprocess::ScaleBRuleName(o.rule));
  return p;
}

absl::StatusOr<preprocess::TilingOptions> ResolveTiling(const v1::TilingSettings& settings, const ImageLimits& limits) {
  if (settings.max_num() < 0 || settings.min_num() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_num and min_num must be >= 0, got ", settings.max_num(), " and ", settings.min_num()));
  }
  preprocess::TilingOptions options;
  options.max_num = settings.max_num() == 0 ? limits.default_max_num : settings.max_num();
  options.min_num = settings.min_num() == 0 ? 1 : settings.min_num();
  options.use_thumbnail = settings.has_use_thumbnail() ? settings.use_thumbnail() : true;
  options.image_size = limits.image_size;
  if (options.max_num > limits.max_tiles) {
    return absl::ResourceExhaustedError(
        absl::StrCat("max_num ", options.max_num, " exceeds this server's limit of ", limits.max_tiles, " tiles"));
  }
  if (settings.has_minimonkey()) {
    INTERNVL_ASSIGN_OR_RETURN(options.minimonkey, ResolveMiniMonkey(settings.minimonkey(), limits));
  }
  INTERNVL_RETURN_IF_ERROR(preprocess::ValidateTilingOptions(options));
  return options;
}

absl::Status ValidateImages(const v1::PreprocessImagesRequest& request, const ImageLimits& limits) {
  if (request.images_size() == 0) return absl::InvalidArgumentError("the request has no images");
  if (request.images_size() > limits.max_images) {
    return absl::ResourceExhaustedError(absl::StrCat("too many images: ", request.images_size(),
                                                     " (this server accepts at most ", limits.max_images, ")"));
  }
  for (int i = 0; i < request.images_size(); ++i) {
    const std::string& image = request.images(i);
    if (image.empty()) return absl::InvalidArgumentError(absl::StrCat("image ", i, " is empty"));
    if (static_cast<int64_t>(image.size()) > limits.max_image_bytes) {
      return absl::ResourceExhaustedError(
          absl::StrCat("image ", i, " is ", image.size(), " bytes; the limit is ", limits.max_image_bytes));
    }
  }
  return absl::OkStatus();
}

void SetMediaDigest(absl::string_view bytes, v1::ImageTiles* info) {
  const Sha256Digest digest = Sha256Of(bytes);
  info->set_media_sha256(digest.data(), digest.size());
}

absl::StatusOr<TiledImage> TileImage(absl::string_view bytes, int index, const preprocess::TilingOptions& options,
                                     const ImageLimits& limits) {
  preprocess::DecodeLimits decode_limits;
  decode_limits.max_pixels = limits.max_pixels;
  auto image = preprocess::DecodeImage(bytes, decode_limits);
  if (!image.ok()) return Annotate(image.status(), absl::StrCat("image ", index));
  auto tiles = preprocess::DynamicPreprocess(*image, options);
  if (!tiles.ok()) return Annotate(tiles.status(), absl::StrCat("image ", index));
  TiledImage out;
  out.info.set_image_index(index);
  out.info.set_width(image->width);
  out.info.set_height(image->height);
  out.info.set_grid_cols(tiles->grid.cols);
  out.info.set_grid_rows(tiles->grid.rows);
  out.info.set_has_thumbnail(tiles->has_thumbnail);
  out.info.set_num_patches(tiles->count);
  out.info.set_tile_size(tiles->size);
  SetMediaDigest(bytes, &out.info);
  out.tiles.dtype = DType::kU8;
  out.tiles.shape = {tiles->count, tiles->size, tiles->size, preprocess::kRgbChannels};
  out.tiles.bytes = std::move(tiles->data);
  return out;
}

}  // namespace internvl::services
