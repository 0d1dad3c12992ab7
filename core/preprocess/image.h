// Image decoding for the InternVL preprocessing: encoded bytes -> RGB uint8,
// the way the official Python code's `Image.open(path).convert('RGB')` does it
// (Pillow 9.4). The services receive bytes, so nothing here touches files.
//
// Formats: JPEG (8-bit colour JPEGs straight through libjpeg-turbo, jpeg.h:
// the same bytes as OpenCV's decoder, a third faster; other JPEGs through
// OpenCV), PNG, WebP, BMP (OpenCV's decoders, linked against the same
// libjpeg-turbo / libpng / libwebp families Pillow uses), GIF (first frame,
// FFmpeg's libavcodec gif decoder: Debian's OpenCV 4.6 has no GIF reader) and
// binary PPM (P6) / PGM (P5) with maxval 255 (our own parser, no codec).
// Anything else is rejected before any decoder runs. A build without media
// (INTERNVL_WITH_MEDIA=OFF, no OpenCV/FFmpeg) decodes PPM/PGM only; the other
// formats are still probed but decoding them is FAILED_PRECONDITION.
//
// Conversion to RGB follows Pillow's convert('RGB'):
//  - grayscale is replicated to R=G=B;
//  - alpha is DROPPED, not composited (Pillow's RGBA->RGB / LA->RGB copy the
//    colour channels and ignore alpha);
//  - palette images are expanded through the palette;
//  - EXIF orientation is NOT applied (Pillow's open() never rotates; OpenCV
//    would by default, so decoding passes IMREAD_IGNORE_ORIENTATION).
//  - 16-bit PNGs keep the high byte of each sample (v >> 8). That is exactly
//    what Pillow does for 16-bit RGB/RGBA (its "RGB;16B" unpacker takes the
//    MSB). For 16-bit GRAYSCALE Pillow opens mode "I" and convert('RGB')
//    clamps the raw value to 0..255 (nearly every pixel turns white); we
//    deliberately keep the high byte there too, giving the faithful image.
//
// Known differences from Pillow (documented, not bugs we chase):
//  - GIF pixels whose index is the transparent one: Pillow shows that palette
//    entry's colour, libavcodec gives its own transparent fill colour.
//  - CMYK JPEGs: OpenCV's CMYK->BGR formula differs from Pillow's.
//
// Safety: the width/height are parsed from the container header BEFORE any
// decoder allocates pixels (decompression bombs are refused at the header),
// truncated JPEGs (no EOI marker, which libjpeg would silently pad with grey)
// and GIFs whose first image's data is cut short (libavcodec would return a
// partial frame) are refused, as Pillow refuses truncated files, and decoder
// failures become statuses. PPM/PGM rasters must be exactly width * height
// samples long. Bad media is INVALID_ARGUMENT; an image over DecodeLimits is
// RESOURCE_EXHAUSTED.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace internvl::preprocess {

// Number of colour channels in an RgbImage / a tile (interleaved R, G, B).
inline constexpr int kRgbChannels = 3;

// Pillow's Image.MAX_IMAGE_PIXELS (1024 * 1024 * 1024 // 4 // 3): the size at
// which Pillow starts warning about decompression bombs. We refuse above it.
inline constexpr int64_t kDefaultMaxImagePixels = int64_t{1024} * 1024 * 1024 / 4 / 3;

// A decoded image: `height` rows of `width` pixels, each 3 bytes R, G, B
// (HWC, row-major, no padding): data.size() == width * height * 3.
struct RgbImage {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> data;

  const uint8_t* row(int y) const { return data.data() + static_cast<size_t>(y) * width * kRgbChannels; }
  uint8_t* row(int y) { return data.data() + static_cast<size_t>(y) * width * kRgbChannels; }
};

struct DecodeLimits {
  // Largest width * height accepted (checked against the header first).
  int64_t max_pixels = kDefaultMaxImagePixels;
};

enum class ImageFormat { kJpeg, kPng, kWebp, kBmp, kGif, kPpm, kPgm };
const char* ImageFormatName(ImageFormat format);

// What the container header says, without decoding pixels.
struct ImageHeader {
  ImageFormat format;
  int width = 0;
  int height = 0;
};

// Identifies the format by its magic bytes and reads the dimensions from the
// header (PNG IHDR, JPEG SOFn, GIF logical screen, BMP info header, WebP
// VP8/VP8L/VP8X, the PPM/PGM header up to maxval). INVALID_ARGUMENT for empty input, an unknown format, a
// header that is cut short, or zero/negative dimensions.
absl::StatusOr<ImageHeader> ProbeImage(absl::string_view bytes);

// Decodes encoded image bytes to RGB as Pillow's open().convert('RGB') does
// (see the file comment). INVALID_ARGUMENT for empty / unknown / corrupt /
// truncated input; RESOURCE_EXHAUSTED when width * height > limits.max_pixels;
// FAILED_PRECONDITION for a format other than PPM/PGM in a build without media.
// Thread-safe.
absl::StatusOr<RgbImage> DecodeImage(absl::string_view bytes,
                                     const DecodeLimits& limits = DecodeLimits());

namespace internal {
// DecodeImage's checks before any decoder runs (the header probe, the limits,
// a JPEG's EOI marker): the header of an image DecodeImage goes on to decode.
absl::StatusOr<ImageHeader> CheckedImageHeader(absl::string_view bytes, const DecodeLimits& limits);
// DecodeImage after those checks: `header` is CheckedImageHeader's result.
absl::StatusOr<RgbImage> DecodeCheckedImage(absl::string_view bytes, const ImageHeader& header,
                                            const DecodeLimits& limits);
}  // namespace internal

}  // namespace internvl::preprocess
