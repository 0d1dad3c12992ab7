// Direct libjpeg(-turbo) decoding of the common JPEG kind (8-bit samples,
// three components in YCbCr or RGB) to RGB rows, as Pillow decodes it: the
// same library with its defaults (ISLOW integer IDCT, fancy upsampling),
// output colour space RGB. It gives the same bytes as OpenCV's imdecode
// (which drives the same libjpeg) in a third less time: no BGR output to swap
// back, no cv::Mat copy, and rows can be consumed while the rest decodes
// (tiling.cc overlaps the resize's horizontal pass with the decode).
// Internal to core/preprocess; decode.cc falls back to OpenCV for other kinds
// (grayscale, CMYK/YCCK, 12-bit).
#pragma once

#include <cstdint>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace internvl::preprocess::internal {

// Progressive scans allowed per image: a crafted progressive JPEG with
// thousands of tiny scans costs a full pass over the coefficients per scan.
// Encoders write about 10 (libjpeg's simple progression) to 20 (mozjpeg).
inline constexpr int kMaxJpegScans = 100;

// Decodes `bytes` (a complete JPEG whose header says width x height; the
// caller checked the size limits) into `out` (width * height * 3 bytes, RGB,
// rows packed). `rows_done(n)` is called each time rows [0, n) are final.
// Returns false, having written nothing, when the image is not of the kind
// above; INVALID_ARGUMENT when libjpeg fails (corrupt data, too many scans).
// Warnings (recoverable corrupt data) are ignored, as OpenCV ignores them.
absl::StatusOr<bool> DecodeJpegRgb(absl::string_view bytes, int width, int height, uint8_t* out,
                                   absl::FunctionRef<void(int)> rows_done);

}  // namespace internvl::preprocess::internal
