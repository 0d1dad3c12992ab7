#include <cstring>
#include <memory>

#ifndef INTERNVL_NO_MEDIA
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavutil/error.h>
#include <libavutil/pixfmt.h>
}
#endif

#include "absl/strings/str_cat.h"
#include "core/preprocess/image.h"
#include "core/preprocess/jpeg.h"
#include "core/status.h"

namespace internvl::preprocess {
namespace {

uint32_t Be32(const uint8_t* p) { return uint32_t{p[0]} << 24 | uint32_t{p[1]} << 16 | uint32_t{p[2]} << 8 | p[3]; }
uint16_t Be16(const uint8_t* p) { return static_cast<uint16_t>(p[0] << 8 | p[1]); }
uint16_t Le16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | p[1] << 8); }
uint32_t Le24(const uint8_t* p) { return uint32_t{p[0]} | uint32_t{p[1]} << 8 | uint32_t{p[2]} << 16; }
uint32_t Le32(const uint8_t* p) { return Le24(p) | uint32_t{p[3]} << 24; }

bool StartsWith(absl::string_view bytes, absl::string_view magic) {
  return bytes.size() >= magic.size() && std::memcmp(bytes.data(), magic.data(), magic.size()) == 0;
}

absl::Status Truncated(ImageFormat format) {
  return absl::InvalidArgumentError(absl::StrCat(ImageFormatName(format), " header is truncated"));
}

// JPEG: walk the marker segments up to the first SOFn (ITU T.81 B.2).
absl::StatusOr<ImageHeader> ProbeJpeg(const uint8_t* p, size_t n) {
  ImageHeader h{ImageFormat::kJpeg};
  size_t pos = 2;  // after SOI
  while (true) {
    while (pos < n && p[pos] != 0xFF) ++pos;  // tolerate junk between segments
    while (pos < n && p[pos] == 0xFF) ++pos;  // fill bytes
    if (pos >= n) return Truncated(h.format);
    const uint8_t marker = p[pos++];
    // Standalone markers carry no length.
    if (marker == 0x01 || (marker >= 0xD0 && marker <= 0xD7)) continue;
    if (marker == 0xD9 || marker == 0xDA)
      return absl::InvalidArgumentError("JPEG has no frame header (SOFn) before its scan data");
    if (pos + 2 > n) return Truncated(h.format);
    const size_t len = Be16(p + pos);
    if (len < 2) return absl::InvalidArgumentError("JPEG marker segment has a bad length");
    const bool is_sof = marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 && marker != 0xCC;
    if (is_sof) {
      // length(2) precision(1) height(2) width(2)
      if (pos + 7 > n || len < 7) return Truncated(h.format);
      h.height = Be16(p + pos + 3);
      h.width = Be16(p + pos + 5);
      return h;
    }
    pos += len;
  }
}

absl::StatusOr<ImageHeader> ProbeWebp(const uint8_t* p, size_t n) {
  ImageHeader h{ImageFormat::kWebp};
  // RIFF <size> WEBP <fourcc> <chunk size> <payload>
  constexpr size_t kPayload = 20;
  if (n < kPayload + 10) return Truncated(h.format);
  const uint8_t* c = p + kPayload;
  if (std::memcmp(p + 12, "VP8X", 4) == 0) {  // extended: canvas size, 24-bit minus-one
    h.width = static_cast<int>(Le24(c + 4)) + 1;
    h.height = static_cast<int>(Le24(c + 7)) + 1;
  } else if (std::memcmp(p + 12, "VP8L", 4) == 0) {  // lossless: signature 0x2f, 14-bit minus-one
    if (c[0] != 0x2F) return absl::InvalidArgumentError("WebP lossless signature is missing");
    const uint32_t bits = Le32(c + 1);
    h.width = static_cast<int>(bits & 0x3FFF) + 1;
    h.height = static_cast<int>((bits >> 14) & 0x3FFF) + 1;
  } else if (std::memcmp(p + 12, "VP8 ", 4) == 0) {  // lossy: keyframe start code then 14-bit sizes
    if (c[3] != 0x9D || c[4] != 0x01 || c[5] != 0x2A)
      return absl::InvalidArgumentError("WebP lossy start code is missing");
    h.width = Le16(c + 6) & 0x3FFF;
    h.height = Le16(c + 8) & 0x3FFF;
  } else {
    return absl::InvalidArgumentError("WebP has an unknown first chunk");
  }
  return h;
}

absl::StatusOr<ImageHeader> ProbeBmp(const uint8_t* p, size_t n) {
  ImageHeader h{ImageFormat::kBmp};
  if (n < 26) return Truncated(h.format);
  const uint32_t dib_size = Le32(p + 14);
  if (dib_size == 12) {  // BITMAPCOREHEADER: 16-bit sizes
    h.width = Le16(p + 18);
    h.height = Le16(p + 20);
  } else {
    // BITMAPINFOHEADER and later: signed 32-bit, negative height = top-down.
    const int64_t w = static_cast<int32_t>(Le32(p + 18));
    int64_t hh = static_cast<int32_t>(Le32(p + 22));
    if (hh < 0) hh = -hh;
    if (w > INT32_MAX || hh > INT32_MAX) return absl::InvalidArgumentError("BMP dimensions are out of range");
    h.width = static_cast<int>(w);
    h.height = static_cast<int>(hh);
  }
  return h;
}

// Netpbm binary PGM (P5) / PPM (P6), maxval 255 only: magic, width, height
// and maxval as decimal tokens separated by whitespace and '#' comments (to
// the end of the line), then exactly one whitespace byte, then the raster.
struct PnmHeader {
  ImageHeader image;
  int channels = 0;
  size_t data_offset = 0;
};

bool IsPnmSpace(uint8_t c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

absl::StatusOr<PnmHeader> ParsePnm(const uint8_t* p, size_t n) {
  PnmHeader h;
  h.image.format = p[1] == '6' ? ImageFormat::kPpm : ImageFormat::kPgm;
  h.channels = p[1] == '6' ? kRgbChannels : 1;
  const char* name = ImageFormatName(h.image.format);
  size_t pos = 2;
  if (pos < n && !IsPnmSpace(p[pos]) && p[pos] != '#')
    return absl::InvalidArgumentError(absl::StrCat(name, " magic number is not followed by whitespace"));
  auto next_number = [&](const char* what) -> absl::StatusOr<int64_t> {
    while (pos < n && (IsPnmSpace(p[pos]) || p[pos] == '#')) {
      if (p[pos] == '#') {
        while (pos < n && p[pos] != '\n' && p[pos] != '\r') ++pos;
      } else {
        ++pos;
      }
    }
    if (pos >= n) return Truncated(h.image.format);
    if (p[pos] < '0' || p[pos] > '9')
      return absl::InvalidArgumentError(absl::StrCat(name, " header has no valid ", what));
    int64_t v = 0;
    for (; pos < n && p[pos] >= '0' && p[pos] <= '9'; ++pos) {
      v = v * 10 + (p[pos] - '0');
      if (v > INT32_MAX) return absl::InvalidArgumentError(absl::StrCat(name, " ", what, " is out of range"));
    }
    if (pos >= n) return Truncated(h.image.format);
    if (!IsPnmSpace(p[pos]) && p[pos] != '#')
      return absl::InvalidArgumentError(absl::StrCat(name, " header has no valid ", what));
    return v;
  };
  INTERNVL_ASSIGN_OR_RETURN(const int64_t width, next_number("width"));
  INTERNVL_ASSIGN_OR_RETURN(const int64_t height, next_number("height"));
  INTERNVL_ASSIGN_OR_RETURN(const int64_t maxval, next_number("maxval"));
  if (!IsPnmSpace(p[pos]))  // a comment may not sit between maxval and the raster
    return absl::InvalidArgumentError(absl::StrCat(name, " maxval must be followed by one whitespace byte"));
  if (maxval != 255)
    return absl::InvalidArgumentError(
        absl::StrCat(name, " maxval ", maxval, " is not supported (only 8-bit samples, maxval 255)"));
  h.image.width = static_cast<int>(width);
  h.image.height = static_cast<int>(height);
  h.data_offset = pos + 1;
  return h;
}

// The raster must be exactly height rows of width samples of `channels`
// bytes: short data is a truncated file, extra bytes are not an image we read.
absl::StatusOr<RgbImage> DecodePnm(absl::string_view bytes, const PnmHeader& h) {
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
  const uint64_t pixels = static_cast<uint64_t>(h.image.width) * static_cast<uint64_t>(h.image.height);
  const uint64_t expected = pixels * h.channels;
  const uint64_t got = bytes.size() - h.data_offset;
  const char* name = ImageFormatName(h.image.format);
  if (got < expected)
    return absl::InvalidArgumentError(absl::StrCat(name, " data is truncated: ", got, " of ", expected, " bytes"));
  if (got > expected)
    return absl::InvalidArgumentError(
        absl::StrCat(name, " has ", got - expected, " bytes after its ", expected, "-byte raster"));
  RgbImage out;
  out.width = h.image.width;
  out.height = h.image.height;
  out.data.resize(pixels * kRgbChannels);
  const uint8_t* src = p + h.data_offset;
  if (h.channels == kRgbChannels) {
    std::memcpy(out.data.data(), src, out.data.size());
  } else {  // grayscale replicated to R=G=B, as Pillow's L->RGB
    for (uint64_t i = 0; i < pixels; ++i) std::memset(out.data.data() + kRgbChannels * i, src[i], kRgbChannels);
  }
  return out;
}

#ifndef INTERNVL_NO_MEDIA
// RAII for the libavcodec objects.
struct AvCodecContextDeleter {
  void operator()(AVCodecContext* c) const { avcodec_free_context(&c); }
};
struct AvPacketDeleter {
  void operator()(AVPacket* p) const { av_packet_free(&p); }
};
struct AvFrameDeleter {
  void operator()(AVFrame* f) const { av_frame_free(&f); }
};

std::string AvError(int err) {
  char buf[AV_ERROR_MAX_STRING_SIZE] = {0};
  av_strerror(err, buf, sizeof(buf));
  return buf;
}

// GIF, first frame, via libavcodec's gif decoder. Given a whole GIF file as
// one packet, it parses the header + global palette (the packet starts with
// the GIF signature, so it is a keyframe) and returns after the first image
// descriptor, composited onto the logical screen as the GIF spec says.
absl::StatusOr<RgbImage> DecodeGif(absl::string_view bytes, const ImageHeader& header,
                                   const DecodeLimits& limits) {
  const AVCodec* codec = avcodec_find_decoder(AV_CODEC_ID_GIF);
  if (codec == nullptr) return absl::InternalError("libavcodec was built without the gif decoder");
  std::unique_ptr<AVCodecContext, AvCodecContextDeleter> ctx(avcodec_alloc_context3(codec));
  std::unique_ptr<AVPacket, AvPacketDeleter> pkt(av_packet_alloc());
  std::unique_ptr<AVFrame, AvFrameDeleter> frame(av_frame_alloc());
  if (!ctx || !pkt || !frame) return absl::ResourceExhaustedError("out of memory creating the GIF decoder");
  ctx->max_pixels = limits.max_pixels;  // a second guard inside the decoder
  ctx->thread_count = 1;
  if (int err = avcodec_open2(ctx.get(), codec, nullptr); err < 0)
    return absl::InternalError(absl::StrCat("cannot open the GIF decoder: ", AvError(err)));
  if (bytes.size() > INT32_MAX - AV_INPUT_BUFFER_PADDING_SIZE)
    return absl::ResourceExhaustedError("GIF data is too large");
  if (av_new_packet(pkt.get(), static_cast<int>(bytes.size())) < 0)  // zeroes the padding
    return absl::ResourceExhaustedError("out of memory for the GIF packet");
  std::memcpy(pkt->data, bytes.data(), bytes.size());
  int err = avcodec_send_packet(ctx.get(), pkt.get());
  if (err < 0) return absl::InvalidArgumentError(absl::StrCat("corrupt GIF: ", AvError(err)));
  err = avcodec_receive_frame(ctx.get(), frame.get());
  if (err == AVERROR(EAGAIN)) {
    avcodec_send_packet(ctx.get(), nullptr);  // drain
    err = avcodec_receive_frame(ctx.get(), frame.get());
  }
  if (err < 0) return absl::InvalidArgumentError(absl::StrCat("corrupt or truncated GIF: ", AvError(err)));
  if (frame->width != header.width || frame->height != header.height)
    return absl::InvalidArgumentError(absl::StrCat("GIF decoded to ", frame->width, "x", frame->height,
                                                   " but its header says ", header.width, "x", header.height));
  RgbImage out;
  out.width = frame->width;
  out.height = frame->height;
  out.data.resize(static_cast<size_t>(out.width) * out.height * kRgbChannels);
  const auto format = static_cast<AVPixelFormat>(frame->format);
  for (int y = 0; y < out.height; ++y) {
    const uint8_t* src = frame->data[0] + static_cast<ptrdiff_t>(y) * frame->linesize[0];
    uint8_t* dst = out.row(y);
    if (format == AV_PIX_FMT_RGB32) {  // native-endian 0xAARRGGBB words
      for (int x = 0; x < out.width; ++x) {
        uint32_t argb;
        std::memcpy(&argb, src + 4 * x, sizeof(argb));
        dst[3 * x + 0] = static_cast<uint8_t>(argb >> 16);
        dst[3 * x + 1] = static_cast<uint8_t>(argb >> 8);
        dst[3 * x + 2] = static_cast<uint8_t>(argb);
      }
    } else if (format == AV_PIX_FMT_PAL8) {  // palette of 0xAARRGGBB words in data[1]
      const uint8_t* pal = frame->data[1];
      for (int x = 0; x < out.width; ++x) {
        uint32_t argb;
        std::memcpy(&argb, pal + 4 * src[x], sizeof(argb));
        dst[3 * x + 0] = static_cast<uint8_t>(argb >> 16);
        dst[3 * x + 1] = static_cast<uint8_t>(argb >> 8);
        dst[3 * x + 2] = static_cast<uint8_t>(argb);
      }
    } else {
      return absl::InternalError(absl::StrCat("unexpected GIF decoder pixel format ", frame->format));
    }
  }
  return out;
}

// libjpeg pads a truncated entropy-coded segment with a fake EOI and only
// warns, so OpenCV returns a half-grey image; Pillow raises "image file is
// truncated". An EOI (FF D9) after the first SOS is required: inside
// entropy-coded data 0xFF is always stuffed (FF 00) or an RSTn marker.
bool JpegHasEndOfImage(absl::string_view bytes) {
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
  const size_t n = bytes.size();
  size_t i = 2;
  for (; i + 1 < n; ++i)
    if (p[i] == 0xFF && p[i + 1] == 0xDA) break;
  for (; i + 1 < n; ++i)
    if (p[i] == 0xFF && p[i + 1] == 0xD9) return true;
  return false;
}

// libavcodec decodes a GIF whose LZW data stops early into a partial frame;
// Pillow raises "image file is truncated". Walk the block structure (GIF89a
// spec: extensions and the first image's sub-blocks) and require the first
// image's data to end with its block terminator.
bool GifFirstImageIsComplete(absl::string_view bytes) {
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
  const size_t n = bytes.size();
  constexpr size_t kScreenDescriptorEnd = 13;
  constexpr uint8_t kColorTableFlag = 0x80;
  auto table_bytes = [](uint8_t packed) { return size_t{3} << ((packed & 0x07) + 1); };
  size_t pos = kScreenDescriptorEnd;
  if (n < pos) return false;
  if (p[10] & kColorTableFlag) pos += table_bytes(p[10]);
  // Skips a chain of data sub-blocks; false when it runs off the end.
  auto skip_sub_blocks = [&]() {
    while (pos < n) {
      const uint8_t len = p[pos++];
      if (len == 0) return true;
      pos += len;
    }
    return false;
  };
  while (pos < n) {
    const uint8_t block = p[pos++];
    if (block == 0x21) {  // extension: label, then sub-blocks
      if (pos >= n) return false;
      ++pos;
      if (!skip_sub_blocks()) return false;
    } else if (block == 0x2C) {  // image descriptor (9 bytes), local table, LZW size
      constexpr size_t kDescriptorBytes = 9;
      if (pos + kDescriptorBytes > n) return false;
      const uint8_t packed = p[pos + kDescriptorBytes - 1];
      pos += kDescriptorBytes;
      if (packed & kColorTableFlag) pos += table_bytes(packed);
      ++pos;  // LZW minimum code size
      return pos <= n && skip_sub_blocks();
    } else {
      return false;  // trailer or garbage before any image
    }
  }
  return false;
}

// OpenCV: BGR (colour conversion, palette expansion, alpha stripping done by
// the codec as Pillow does), native depth kept so 16-bit samples can be
// reduced the documented way, EXIF orientation ignored.
absl::StatusOr<RgbImage> DecodeWithOpenCv(absl::string_view bytes, const ImageHeader& header) {
  constexpr int kFlags = cv::IMREAD_COLOR | cv::IMREAD_ANYDEPTH | cv::IMREAD_IGNORE_ORIENTATION;
  cv::Mat decoded;
  try {
    // imdecode only reads the buffer; the const_cast is for cv::Mat's API.
    const cv::Mat buf(1, static_cast<int>(bytes.size()), CV_8UC1,
                      const_cast<char*>(bytes.data()));
    decoded = cv::imdecode(buf, kFlags);
  } catch (const cv::Exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot decode ", ImageFormatName(header.format), ": ", e.what()));
  }
  if (decoded.empty())
    return absl::InvalidArgumentError(
        absl::StrCat("corrupt or truncated ", ImageFormatName(header.format), " data"));
  if (decoded.cols != header.width || decoded.rows != header.height)
    return absl::InvalidArgumentError(absl::StrCat(ImageFormatName(header.format), " decoded to ",
                                                   decoded.cols, "x", decoded.rows, " but its header says ",
                                                   header.width, "x", header.height));
  if (decoded.channels() != kRgbChannels)
    return absl::InternalError(absl::StrCat("decoder returned ", decoded.channels(), " channels"));
  RgbImage out;
  out.width = decoded.cols;
  out.height = decoded.rows;
  out.data.resize(static_cast<size_t>(out.width) * out.height * kRgbChannels);
  for (int y = 0; y < out.height; ++y) {
    uint8_t* dst = out.row(y);
    if (decoded.depth() == CV_8U) {
      const uint8_t* src = decoded.ptr<uint8_t>(y);
      for (int x = 0; x < out.width; ++x) {  // BGR -> RGB
        dst[3 * x + 0] = src[3 * x + 2];
        dst[3 * x + 1] = src[3 * x + 1];
        dst[3 * x + 2] = src[3 * x + 0];
      }
    } else if (decoded.depth() == CV_16U) {
      // High byte, as Pillow's 16-bit RGB unpackers (see image.h).
      const uint16_t* src = decoded.ptr<uint16_t>(y);
      for (int x = 0; x < out.width; ++x) {
        dst[3 * x + 0] = static_cast<uint8_t>(src[3 * x + 2] >> 8);
        dst[3 * x + 1] = static_cast<uint8_t>(src[3 * x + 1] >> 8);
        dst[3 * x + 2] = static_cast<uint8_t>(src[3 * x + 0] >> 8);
      }
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unsupported sample depth in ",
                                                     ImageFormatName(header.format)));
    }
  }
  return out;
}
#endif  // INTERNVL_NO_MEDIA

}  // namespace

const char* ImageFormatName(ImageFormat format) {
  switch (format) {
    case ImageFormat::kJpeg: return "JPEG";
    case ImageFormat::kPng: return "PNG";
    case ImageFormat::kWebp: return "WebP";
    case ImageFormat::kBmp: return "BMP";
    case ImageFormat::kGif: return "GIF";
    case ImageFormat::kPpm: return "PPM";
    case ImageFormat::kPgm: return "PGM";
  }
  return "?";
}

absl::StatusOr<ImageHeader> ProbeImage(absl::string_view bytes) {
  if (bytes.empty()) return absl::InvalidArgumentError("image data is empty");
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
  const size_t n = bytes.size();
  absl::StatusOr<ImageHeader> header;
  if (StartsWith(bytes, "\x89PNG\r\n\x1a\n")) {
    // The signature, then IHDR first: length 13, "IHDR", width, height (BE).
    if (n < 24) return Truncated(ImageFormat::kPng);
    if (std::memcmp(p + 12, "IHDR", 4) != 0) return absl::InvalidArgumentError("PNG does not start with IHDR");
    const uint32_t w = Be32(p + 16), h = Be32(p + 20);
    if (w > INT32_MAX || h > INT32_MAX) return absl::InvalidArgumentError("PNG dimensions are out of range");
    header = ImageHeader{ImageFormat::kPng, static_cast<int>(w), static_cast<int>(h)};
  } else if (StartsWith(bytes, "\xFF\xD8\xFF")) {
    header = ProbeJpeg(p, n);
  } else if (StartsWith(bytes, "GIF87a") || StartsWith(bytes, "GIF89a")) {
    if (n < 10) return Truncated(ImageFormat::kGif);
    header = ImageHeader{ImageFormat::kGif, Le16(p + 6), Le16(p + 8)};
  } else if (StartsWith(bytes, "BM")) {
    header = ProbeBmp(p, n);
  } else if (n >= 12 && StartsWith(bytes, "RIFF") && std::memcmp(p + 8, "WEBP", 4) == 0) {
    header = ProbeWebp(p, n);
  } else if (StartsWith(bytes, "P6") || StartsWith(bytes, "P5")) {
    auto pnm = ParsePnm(p, n);
    if (!pnm.ok()) return pnm.status();
    header = pnm->image;
  } else {
#ifdef INTERNVL_NO_MEDIA
    return absl::InvalidArgumentError("unknown image format (supported in this build: PPM, PGM)");
#else
    return absl::InvalidArgumentError("unknown image format (supported: JPEG, PNG, WebP, BMP, GIF, PPM, PGM)");
#endif
  }
  if (!header.ok()) return header.status();
  if (header->width <= 0 || header->height <= 0)
    return absl::InvalidArgumentError(absl::StrCat(ImageFormatName(header->format), " has invalid dimensions ",
                                                   header->width, "x", header->height));
  return header;
}

namespace internal {
absl::StatusOr<ImageHeader> CheckedImageHeader(absl::string_view bytes, const DecodeLimits& limits) {
  INTERNVL_ASSIGN_OR_RETURN(const ImageHeader header, ProbeImage(bytes));
  const int64_t pixels = int64_t{header.width} * header.height;
  if (pixels > limits.max_pixels)
    return absl::ResourceExhaustedError(absl::StrCat(ImageFormatName(header.format), " image is ", header.width,
                                                     "x", header.height, " = ", pixels,
                                                     " pixels, over the limit of ", limits.max_pixels));
  if (bytes.size() > static_cast<size_t>(INT32_MAX))
    return absl::ResourceExhaustedError("encoded image is larger than 2 GiB");
#ifndef INTERNVL_NO_MEDIA
  if (header.format == ImageFormat::kJpeg && !JpegHasEndOfImage(bytes))
    return absl::InvalidArgumentError("JPEG data is truncated (no EOI marker)");
#endif
  return header;
}

absl::StatusOr<RgbImage> DecodeCheckedImage(absl::string_view bytes, const ImageHeader& header,
                                            const DecodeLimits& limits) {
  if (header.format == ImageFormat::kPpm || header.format == ImageFormat::kPgm) {
    INTERNVL_ASSIGN_OR_RETURN(const PnmHeader pnm,
                              ParsePnm(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()));
    return DecodePnm(bytes, pnm);
  }
#ifdef INTERNVL_NO_MEDIA
  return absl::FailedPreconditionError(
      absl::StrCat("cannot decode ", ImageFormatName(header.format),
                   ": this build has no image codecs (built with INTERNVL_WITH_MEDIA=OFF): only PPM/PGM images"));
#else
  switch (header.format) {
    case ImageFormat::kGif:
      if (!GifFirstImageIsComplete(bytes))
        return absl::InvalidArgumentError("GIF data is truncated or has no image");
      return DecodeGif(bytes, header, limits);
    case ImageFormat::kJpeg: {
      RgbImage out;
      out.width = header.width;
      out.height = header.height;
      out.data.resize(static_cast<size_t>(out.width) * out.height * kRgbChannels);
      INTERNVL_ASSIGN_OR_RETURN(const bool decoded,
                                internal::DecodeJpegRgb(bytes, out.width, out.height, out.data.data(), [](int) {}));
      if (decoded) return out;
      return DecodeWithOpenCv(bytes, header);  // grayscale, CMYK, 12-bit
    }
    default:
      return DecodeWithOpenCv(bytes, header);
  }
#endif
}
}  // namespace internal

absl::StatusOr<RgbImage> DecodeImage(absl::string_view bytes, const DecodeLimits& limits) {
  INTERNVL_ASSIGN_OR_RETURN(const ImageHeader header, internal::CheckedImageHeader(bytes, limits));
  return internal::DecodeCheckedImage(bytes, header, limits);
}

}  // namespace internvl::preprocess
