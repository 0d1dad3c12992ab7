#include <cstring>
#include <string>
#include <vector>

#include <zlib.h>

#include <cstdio>
#include <cstdlib>
extern "C" {
#include <jpeglib.h>
}

#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "absl/strings/str_cat.h"
#include "core/preprocess/image.h"
#include "core/preprocess/jpeg.h"
#include "core/preprocess/runtime.h"
#include "core/preprocess/tiling.h"
#include "gtest/gtest.h"

namespace internvl::preprocess {
namespace {

using Bytes = std::string;

// --- Encoders for test inputs (real files, built in the test) -------------

// A BGR test pattern (distinct values per channel) as OpenCV wants it.
cv::Mat Pattern(int w, int h) {
  cv::Mat m(h, w, CV_8UC3);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) m.at<cv::Vec3b>(y, x) = cv::Vec3b(x * 5 % 256, y * 7 % 256, (x + y) * 3 % 256);
  return m;
}

Bytes Encode(const cv::Mat& m, const std::string& ext, const std::vector<int>& params = {}) {
  std::vector<uchar> buf;
  EXPECT_TRUE(cv::imencode(ext, m, buf, params));
  return Bytes(buf.begin(), buf.end());
}

void PutBe32(Bytes* out, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) out->push_back(static_cast<char>(v >> s));
}
void PutLe16(Bytes* out, int v) {
  out->push_back(static_cast<char>(v & 0xFF));
  out->push_back(static_cast<char>(v >> 8));
}
void PngChunk(Bytes* out, const char* type, const Bytes& data) {
  PutBe32(out, static_cast<uint32_t>(data.size()));
  const size_t start = out->size();
  out->append(type, 4);
  out->append(data);
  const uLong crc = crc32(0, reinterpret_cast<const Bytef*>(out->data() + start), out->size() - start);
  PutBe32(out, static_cast<uint32_t>(crc));
}
// A PNG from raw scanlines (filter 0), any colour type, built with zlib.
Bytes MakePng(int w, int h, int color_type, int bit_depth, int bytes_per_row, const Bytes& pixels,
              const Bytes& plte = "", const Bytes& trns = "") {
  Bytes out("\x89PNG\r\n\x1a\n", 8);
  Bytes ihdr;
  PutBe32(&ihdr, w);
  PutBe32(&ihdr, h);
  ihdr += {static_cast<char>(bit_depth), static_cast<char>(color_type), 0, 0, 0};
  PngChunk(&out, "IHDR", ihdr);
  if (!plte.empty()) PngChunk(&out, "PLTE", plte);
  if (!trns.empty()) PngChunk(&out, "tRNS", trns);
  Bytes raw;
  for (int y = 0; y < h; ++y) {
    raw.push_back(0);
    raw.append(pixels, static_cast<size_t>(y) * bytes_per_row, bytes_per_row);
  }
  uLongf len = compressBound(raw.size());
  Bytes z(len, '\0');
  EXPECT_EQ(compress(reinterpret_cast<Bytef*>(z.data()), &len, reinterpret_cast<const Bytef*>(raw.data()),
                     raw.size()),
            Z_OK);
  z.resize(len);
  PngChunk(&out, "IDAT", z);
  PngChunk(&out, "IEND", "");
  return out;
}

// A GIF89a with a 4-colour global palette and one image per entry of
// `frames` (colour indices). The LZW stream emits a clear code before every
// pixel, so codes stay 3 bits wide: valid GIF that any decoder reads.
Bytes MakeGif(int w, int h, const Bytes& palette_rgb4, const std::vector<std::vector<int>>& frames) {
  Bytes out = "GIF89a";
  PutLe16(&out, w);
  PutLe16(&out, h);
  out += {static_cast<char>(0x91), 0, 0};  // global table of 2^(1+1) colours
  out += palette_rgb4;
  constexpr int kMinCodeSize = 2, kClear = 4, kEnd = 5, kCodeBits = 3;
  for (const auto& indices : frames) {
    out.push_back(',');
    PutLe16(&out, 0);
    PutLe16(&out, 0);
    PutLe16(&out, w);
    PutLe16(&out, h);
    out.push_back(0);
    out.push_back(kMinCodeSize);
    Bytes data;
    uint32_t acc = 0;
    int nbits = 0;
    auto emit = [&](int code) {
      acc |= static_cast<uint32_t>(code) << nbits;
      nbits += kCodeBits;
      while (nbits >= 8) {
        data.push_back(static_cast<char>(acc & 0xFF));
        acc >>= 8;
        nbits -= 8;
      }
    };
    for (int idx : indices) {
      emit(kClear);
      emit(idx);
    }
    emit(kEnd);
    if (nbits > 0) data.push_back(static_cast<char>(acc & 0xFF));
    for (size_t i = 0; i < data.size(); i += 255) {
      const size_t n = std::min<size_t>(255, data.size() - i);
      out.push_back(static_cast<char>(n));
      out.append(data, i, n);
    }
    out.push_back(0);
  }
  out.push_back(';');
  return out;
}

void ExpectPixel(const RgbImage& im, int x, int y, int r, int g, int b) {
  const uint8_t* p = im.row(y) + 3 * x;
  EXPECT_EQ(p[0], r) << "R at " << x << "," << y;
  EXPECT_EQ(p[1], g) << "G at " << x << "," << y;
  EXPECT_EQ(p[2], b) << "B at " << x << "," << y;
}

// --- Formats ---------------------------------------------------------------

TEST(DecodeImage, PngIsLosslessAndRgbOrdered) {
  const cv::Mat bgr = Pattern(33, 17);
  auto im = DecodeImage(Encode(bgr, ".png"));
  ASSERT_TRUE(im.ok()) << im.status();
  ASSERT_EQ(im->width, 33);
  ASSERT_EQ(im->height, 17);
  for (int y = 0; y < 17; ++y)
    for (int x = 0; x < 33; ++x) {
      const cv::Vec3b v = bgr.at<cv::Vec3b>(y, x);
      ExpectPixel(*im, x, y, v[2], v[1], v[0]);
    }
}

TEST(DecodeImage, BmpAndLosslessWebpDecodeExactly) {
  const cv::Mat bgr = Pattern(20, 11);
  for (const auto& [ext, params] : {std::pair<std::string, std::vector<int>>{".bmp", {}},
                                    {".webp", {cv::IMWRITE_WEBP_QUALITY, 101}}}) {
    SCOPED_TRACE(ext);
    auto im = DecodeImage(Encode(bgr, ext, params));
    ASSERT_TRUE(im.ok()) << im.status();
    ASSERT_EQ(im->width, 20);
    const cv::Vec3b v = bgr.at<cv::Vec3b>(7, 13);
    ExpectPixel(*im, 13, 7, v[2], v[1], v[0]);
  }
}

TEST(DecodeImage, JpegDecodesCloseToTheSource) {
  cv::Mat smooth(64, 96, CV_8UC3);
  for (int y = 0; y < 64; ++y)
    for (int x = 0; x < 96; ++x) smooth.at<cv::Vec3b>(y, x) = cv::Vec3b(x * 2, y * 3, 100);
  auto im = DecodeImage(Encode(smooth, ".jpg", {cv::IMWRITE_JPEG_QUALITY, 95}));
  ASSERT_TRUE(im.ok()) << im.status();
  ASSERT_EQ(im->width, 96);
  ASSERT_EQ(im->height, 64);
  const uint8_t* p = im->row(32) + 3 * 48;
  EXPECT_NEAR(p[0], 100, 4);  // R
  EXPECT_NEAR(p[1], 96, 4);   // G
  EXPECT_NEAR(p[2], 96, 4);   // B
}

TEST(DecodeImage, GrayscaleIsReplicatedToRgb) {
  cv::Mat gray(5, 6, CV_8UC1);
  for (int i = 0; i < 30; ++i) gray.data[i] = static_cast<uchar>(i * 8);
  for (const std::string ext : {".png", ".bmp"}) {
    auto im = DecodeImage(Encode(gray, ext));
    ASSERT_TRUE(im.ok()) << ext << ": " << im.status();
    ExpectPixel(*im, 3, 2, 15 * 8, 15 * 8, 15 * 8);
  }
  auto jpeg = DecodeImage(Encode(gray, ".jpg"));
  ASSERT_TRUE(jpeg.ok()) << jpeg.status();
  const uint8_t* p = jpeg->row(2) + 9;
  EXPECT_TRUE(p[0] == p[1] && p[1] == p[2]);
}

TEST(DecodeImage, RgbaDropsAlphaWithoutCompositing) {
  cv::Mat bgra(2, 2, CV_8UC4, cv::Scalar(30, 20, 10, 0));  // fully transparent
  bgra.at<cv::Vec4b>(1, 1) = cv::Vec4b(3, 2, 1, 128);
  auto im = DecodeImage(Encode(bgra, ".png"));
  ASSERT_TRUE(im.ok()) << im.status();
  ExpectPixel(*im, 0, 0, 10, 20, 30);  // colour kept although alpha is 0
  ExpectPixel(*im, 1, 1, 1, 2, 3);
  // Gray + alpha (colour type 4).
  auto la = DecodeImage(MakePng(2, 1, 4, 8, 4, Bytes("\x50\x00\xA0\xFF", 4)));
  ASSERT_TRUE(la.ok()) << la.status();
  ExpectPixel(*la, 0, 0, 0x50, 0x50, 0x50);
  ExpectPixel(*la, 1, 0, 0xA0, 0xA0, 0xA0);
}

TEST(DecodeImage, PaletteIsExpandedEvenWithTransparency) {
  const Bytes plte("\xFF\x00\x00\x00\xFF\x00\x00\x00\xFF", 9);
  const Bytes indices("\x00\x01\x02\x01", 4);
  for (const Bytes& trns : {Bytes(), Bytes("\x00", 1)}) {
    auto im = DecodeImage(MakePng(2, 2, 3, 8, 2, indices, plte, trns));
    ASSERT_TRUE(im.ok()) << im.status();
    ExpectPixel(*im, 0, 0, 255, 0, 0);  // index 0 keeps its colour even when transparent
    ExpectPixel(*im, 1, 0, 0, 255, 0);
    ExpectPixel(*im, 0, 1, 0, 0, 255);
  }
}

TEST(DecodeImage, SixteenBitPngKeepsTheHighByte) {
  cv::Mat m(1, 2, CV_16UC3);
  m.at<cv::Vec3w>(0, 0) = cv::Vec3w(0x12FF, 0x3400, 0xFFFF);  // B, G, R
  m.at<cv::Vec3w>(0, 1) = cv::Vec3w(0x00FF, 0x8080, 0x0100);
  auto im = DecodeImage(Encode(m, ".png"));
  ASSERT_TRUE(im.ok()) << im.status();
  ExpectPixel(*im, 0, 0, 0xFF, 0x34, 0x12);
  ExpectPixel(*im, 1, 0, 0x01, 0x80, 0x00);
  cv::Mat g(1, 1, CV_16UC1, cv::Scalar(0xABCD));
  auto gray = DecodeImage(Encode(g, ".png"));
  ASSERT_TRUE(gray.ok()) << gray.status();
  ExpectPixel(*gray, 0, 0, 0xAB, 0xAB, 0xAB);
}

TEST(DecodeImage, ExifOrientationIsIgnoredLikePillow) {
  const Bytes jpeg = Encode(Pattern(40, 20), ".jpg");
  // APP1 Exif, little-endian TIFF, one IFD entry: Orientation (0x0112) = 6
  // ("rotate 90 CW"), which OpenCV would apply by default.
  const Bytes tiff("II*\x00\x08\x00\x00\x00\x01\x00\x12\x01\x03\x00\x01\x00\x00\x00\x06\x00\x00\x00\x00\x00\x00\x00",
                   26);
  const Bytes payload = Bytes("Exif\0\0", 6) + tiff;
  Bytes app1("\xFF\xE1", 2);
  app1.push_back(static_cast<char>((payload.size() + 2) >> 8));
  app1.push_back(static_cast<char>((payload.size() + 2) & 0xFF));
  const Bytes with_exif = jpeg.substr(0, 2) + app1 + payload + jpeg.substr(2);
  auto im = DecodeImage(with_exif);
  ASSERT_TRUE(im.ok()) << im.status();
  EXPECT_EQ(im->width, 40);
  EXPECT_EQ(im->height, 20);
}

TEST(DecodeImage, GifFirstFrameThroughThePalette) {
  const Bytes palette("\x10\x20\x30\xFF\x00\x00\x00\xFF\x00\x00\x00\xFF", 12);
  const Bytes gif = MakeGif(3, 2, palette, {{0, 1, 2, 3, 2, 1}, {3, 3, 3, 3, 3, 3}});
  auto im = DecodeImage(gif);
  ASSERT_TRUE(im.ok()) << im.status();
  ASSERT_EQ(im->width, 3);
  ASSERT_EQ(im->height, 2);
  ExpectPixel(*im, 0, 0, 0x10, 0x20, 0x30);
  ExpectPixel(*im, 1, 0, 255, 0, 0);
  ExpectPixel(*im, 2, 0, 0, 255, 0);
  ExpectPixel(*im, 0, 1, 0, 0, 255);  // the second frame (all index 3) is not used
  ExpectPixel(*im, 2, 1, 255, 0, 0);
}

// --- Bad media --------------------------------------------------------------

TEST(DecodeImage, EmptyIsInvalidArgument) {
  EXPECT_EQ(DecodeImage("").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(DecodeImage, UnknownFormatIsInvalidArgument) {
  auto s = DecodeImage("this is not an image at all").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("unknown image format"), absl::string_view::npos) << s;
  // TIFF is a real format, but not one we accept.
  EXPECT_EQ(DecodeImage(Bytes("II*\0\x08\0\0\0", 8)).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(DecodeImage, CorruptDataIsInvalidArgument) {
  Bytes png = Encode(Pattern(16, 16), ".png");
  for (size_t i = 40; i < png.size() - 12; ++i) png[i] = static_cast<char>(png[i] ^ 0x5A);
  EXPECT_EQ(DecodeImage(png).status().code(), absl::StatusCode::kInvalidArgument);
  Bytes gif = MakeGif(2, 1, Bytes(12, '\0'), {{0, 1}});
  gif[gif.size() - 6] = static_cast<char>(0xFF);  // bad LZW code
  EXPECT_EQ(DecodeImage(gif).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(DecodeImage(Bytes("\xFF\xD8\xFF\xDA\x00\x02", 6)).ok());  // scan before any frame header
}

// A JPEG written with libjpeg itself, for the variants OpenCV's encoder does
// not offer: chroma sampling (h, v of the first component; the others 1x1),
// progressive, restart intervals, RGB colour space (no YCbCr transform).
struct JpegVariant {
  int h = 2, v = 2;
  bool progressive = false;
  int restart_rows = 0;
  bool rgb = false;
  int quality = 90;
};
Bytes EncodeWithLibjpeg(const cv::Mat& bgr, const JpegVariant& variant) {
  jpeg_compress_struct c;
  jpeg_error_mgr err;
  c.err = jpeg_std_error(&err);
  jpeg_create_compress(&c);
  unsigned char* mem = nullptr;
  unsigned long size = 0;
  jpeg_mem_dest(&c, &mem, &size);
  c.image_width = bgr.cols;
  c.image_height = bgr.rows;
  c.input_components = 3;
  c.in_color_space = JCS_RGB;
  jpeg_set_defaults(&c);
  if (variant.rgb) jpeg_set_colorspace(&c, JCS_RGB);
  jpeg_set_quality(&c, variant.quality, TRUE);
  c.comp_info[0].h_samp_factor = variant.h;
  c.comp_info[0].v_samp_factor = variant.v;
  if (variant.progressive) jpeg_simple_progression(&c);
  c.restart_in_rows = variant.restart_rows;
  jpeg_start_compress(&c, TRUE);
  std::vector<unsigned char> row(static_cast<size_t>(bgr.cols) * 3);
  while (c.next_scanline < c.image_height) {
    const auto* src = bgr.ptr<uint8_t>(static_cast<int>(c.next_scanline));
    for (int x = 0; x < bgr.cols; ++x) {
      row[3 * x] = src[3 * x + 2];
      row[3 * x + 1] = src[3 * x + 1];
      row[3 * x + 2] = src[3 * x];
    }
    JSAMPROW p = row.data();
    jpeg_write_scanlines(&c, &p, 1);
  }
  jpeg_finish_compress(&c);
  jpeg_destroy_compress(&c);
  Bytes out(reinterpret_cast<const char*>(mem), size);
  std::free(mem);
  return out;
}

// A photo-like pattern: gradients plus noise, so every DCT coefficient and
// the fancy upsampling's neighbours matter.
cv::Mat NoisyPattern(int w, int h) {
  cv::Mat m(h, w, CV_8UC3);
  cv::randn(m, cv::Scalar(128, 128, 128), cv::Scalar(40, 40, 40));
  cv::Mat ramp = Pattern(w, h);
  cv::addWeighted(m, 0.5, ramp, 0.5, 0, m);
  return m;
}

// OpenCV's decode (the libjpeg path Pillow-exactness was established with),
// in RGB order.
std::vector<uint8_t> OpenCvRgb(const Bytes& jpeg) {
  const cv::Mat buf(1, static_cast<int>(jpeg.size()), CV_8UC1, const_cast<char*>(jpeg.data()));
  cv::Mat bgr = cv::imdecode(buf, cv::IMREAD_COLOR | cv::IMREAD_IGNORE_ORIENTATION);
  EXPECT_FALSE(bgr.empty());
  cv::Mat rgb;
  cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
  return std::vector<uint8_t>(rgb.data, rgb.data + rgb.total() * 3);
}

TEST(DecodeImage, JpegDecodesExactlyAsOpenCvForEverySamplingAndCoding) {
  cv::theRNG().state = 7;
  const std::vector<std::pair<int, int>> sizes = {{1, 1}, {17, 9}, {37, 53}, {301, 203}, {640, 480}};
  const std::vector<JpegVariant> variants = {
      {2, 2}, {2, 1}, {1, 2}, {1, 1}, {2, 2, true}, {1, 1, true}, {2, 2, false, 1}, {2, 1, true, 2},
      {1, 1, false, 0, true}, {2, 2, false, 0, false, 40}, {2, 2, false, 0, false, 100}};
  int checked = 0;
  for (auto [w, h] : sizes) {
    const cv::Mat m = NoisyPattern(w, h);
    for (const JpegVariant& v : variants) {
      const Bytes jpeg = EncodeWithLibjpeg(m, v);
      const std::string what = absl::StrCat(w, "x", h, " sampling ", v.h, "x", v.v, " progressive ", v.progressive,
                                            " restart ", v.restart_rows, " rgb ", v.rgb, " q", v.quality);
      auto im = DecodeImage(jpeg);
      ASSERT_TRUE(im.ok()) << what << ": " << im.status();
      ASSERT_EQ(im->width, w);
      ASSERT_EQ(im->height, h);
      ASSERT_TRUE(im->data == OpenCvRgb(jpeg)) << what;
      // The direct path took it (it did not fall back to OpenCV), reporting
      // its rows in order up to the last one.
      std::vector<uint8_t> direct(static_cast<size_t>(w) * h * 3);
      int last = 0;
      bool ordered = true;
      auto handled = internal::DecodeJpegRgb(jpeg, w, h, direct.data(), [&](int rows) {
        ordered = ordered && rows > last;
        last = rows;
      });
      ASSERT_TRUE(handled.ok()) << what;
      EXPECT_TRUE(*handled) << what;
      EXPECT_TRUE(ordered) << what;
      EXPECT_EQ(last, h) << what;
      EXPECT_TRUE(direct == im->data) << what;
      ++checked;
    }
  }
  EXPECT_EQ(checked, 55);
}

TEST(DecodeImage, JpegKindsTheDirectPathLeavesToOpenCv) {
  // Grayscale: one component; the direct path declines and writes nothing.
  cv::Mat gray(12, 10, CV_8UC1, cv::Scalar(77));
  const Bytes jpeg = Encode(gray, ".jpg");
  std::vector<uint8_t> out(10 * 12 * 3, 0xAB);
  auto handled = internal::DecodeJpegRgb(jpeg, 10, 12, out.data(), [](int) {});
  ASSERT_TRUE(handled.ok());
  EXPECT_FALSE(*handled);
  EXPECT_EQ(out, std::vector<uint8_t>(10 * 12 * 3, 0xAB));
  auto im = DecodeImage(jpeg);
  ASSERT_TRUE(im.ok()) << im.status();
  EXPECT_EQ(im->data, std::vector<uint8_t>(10 * 12 * 3, 77));
}

// A progressive JPEG whose last scan is repeated: libjpeg only warns about
// the bogus progression and runs a pass over the coefficients per scan, a
// cheap way to make a small file cost a lot of CPU. Up to kMaxJpegScans
// scans decode; more are refused.
TEST(DecodeImage, JpegWithTooManyScansIsRefused) {
  const Bytes jpeg = EncodeWithLibjpeg(NoisyPattern(64, 48), JpegVariant{2, 2, true});
  // The last SOS segment (FF DA) up to the EOI (FF D9) at the end.
  const size_t last_sos = jpeg.rfind("\xFF\xDA");
  ASSERT_NE(last_sos, std::string::npos);
  ASSERT_EQ(jpeg.substr(jpeg.size() - 2), "\xFF\xD9");
  const Bytes scan = jpeg.substr(last_sos, jpeg.size() - 2 - last_sos);
  auto with_scans = [&](int extra) {
    Bytes out = jpeg.substr(0, jpeg.size() - 2);
    for (int i = 0; i < extra; ++i) out += scan;
    return out + "\xFF\xD9";
  };
  auto few = DecodeImage(with_scans(20));
  EXPECT_TRUE(few.ok()) << few.status();
  auto many = DecodeImage(with_scans(internal::kMaxJpegScans));
  ASSERT_FALSE(many.ok());
  EXPECT_EQ(many.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(many.status().message().find("scans"), std::string::npos) << many.status();
}

// LoadImageTiles overlaps a direct JPEG decode with the resizes' horizontal
// passes (tiling.cc): the tiles must be those of decoding, then tiling, on
// any thread count, including grids where a resize has no horizontal pass.
TEST(LoadImageTiles, StreamedJpegTilesEqualDecodeThenTile) {
  cv::theRNG().state = 11;
  const PreprocessRuntime saved = GetPreprocessRuntime();
  int checked = 0;
  for (auto [w, h] : std::vector<std::pair<int, int>>{{1920, 1080}, {896, 448}, {448, 300}, {37, 53}, {700, 2100}}) {
    const Bytes jpeg = EncodeWithLibjpeg(NoisyPattern(w, h), JpegVariant{});
    for (int max_num : {1, 6, 12}) {
      TilingOptions options;
      options.max_num = max_num;
      SetPreprocessRuntime(PreprocessRuntime{1, true});
      auto image = DecodeImage(jpeg);
      ASSERT_TRUE(image.ok()) << image.status();
      auto expected = DynamicPreprocess(*image, options);
      ASSERT_TRUE(expected.ok()) << expected.status();
      for (int threads : {1, 2, 3}) {
        SetPreprocessRuntime(PreprocessRuntime{threads, true});
        auto tiles = LoadImageTiles(jpeg, options);
        ASSERT_TRUE(tiles.ok()) << tiles.status();
        const std::string what = absl::StrCat(w, "x", h, " max_num ", max_num, " threads ", threads);
        EXPECT_EQ(tiles->count, expected->count) << what;
        EXPECT_EQ(tiles->grid.cols, expected->grid.cols) << what;
        EXPECT_EQ(tiles->grid.rows, expected->grid.rows) << what;
        EXPECT_EQ(tiles->has_thumbnail, expected->has_thumbnail) << what;
        EXPECT_TRUE(tiles->data == expected->data) << what;
        ++checked;
      }
    }
  }
  SetPreprocessRuntime(saved);
  EXPECT_EQ(checked, 45);
}

// A decode that fails after the header was accepted must release the threads
// waiting for its rows and surface as INVALID_ARGUMENT (not hang, not crash).
TEST(LoadImageTiles, JpegFailingInsideTheDecodeIsInvalidArgumentOnAnyThreadCount) {
  cv::theRNG().state = 12;
  // A progressive JPEG whose last scan names a component the frame does not
  // have: libjpeg accepts the header, then fails on that scan.
  const Bytes jpeg = EncodeWithLibjpeg(NoisyPattern(900, 700), JpegVariant{2, 2, true});
  Bytes bad_scan = jpeg;
  const size_t last_sos = bad_scan.rfind("\xFF\xDA");
  ASSERT_NE(last_sos, std::string::npos);
  bad_scan[last_sos + 5] = 0x77;  // FF DA, length (2), count (1), first component id
  // Entropy-coded data replaced by bytes that are no valid code: anything
  // from warnings (decoded) to a failure, never a crash.
  const size_t sos = jpeg.find("\xFF\xDA");
  ASSERT_NE(sos, std::string::npos);
  Bytes garbage = jpeg;
  for (size_t k = sos + 200; k + 2 < garbage.size(); ++k) garbage[k] = static_cast<char>(k % 7 == 0 ? 0xFF : 0x00);
  const PreprocessRuntime saved = GetPreprocessRuntime();
  for (int threads : {1, 2, 4}) {
    SetPreprocessRuntime(PreprocessRuntime{threads, true});
    auto tiles = LoadImageTiles(bad_scan, TilingOptions{});
    ASSERT_FALSE(tiles.ok()) << "threads " << threads;
    EXPECT_EQ(tiles.status().code(), absl::StatusCode::kInvalidArgument) << tiles.status();
    auto other = LoadImageTiles(garbage, TilingOptions{});
    if (!other.ok()) {
      EXPECT_EQ(other.status().code(), absl::StatusCode::kInvalidArgument) << other.status();
    }
  }
  SetPreprocessRuntime(saved);
}

TEST(DecodeImage, EveryTruncationFailsCleanly) {
  const cv::Mat m = Pattern(24, 16);
  const std::vector<std::pair<std::string, Bytes>> files = {
      {"png", Encode(m, ".png")},
      {"jpeg", Encode(m, ".jpg")},
      {"bmp", Encode(m, ".bmp")},
      {"webp", Encode(m, ".webp", {cv::IMWRITE_WEBP_QUALITY, 80})},
      {"gif", MakeGif(4, 4, Bytes(12, '\x40'), {std::vector<int>(16, 1)})},
  };
  for (const auto& [name, bytes] : files) {
    ASSERT_TRUE(DecodeImage(bytes).ok()) << name;
    int accepted = 0;
    for (size_t len = 0; len < bytes.size(); ++len) {
      auto im = DecodeImage(absl::string_view(bytes.data(), len));
      if (im.ok()) {
        ++accepted;
      } else {
        EXPECT_EQ(im.status().code(), absl::StatusCode::kInvalidArgument) << name << " len " << len;
      }
    }
    // Only a GIF missing its final trailer byte (';' after the first frame's
    // complete data) may still decode; pixel data must never be cut short.
    EXPECT_LE(accepted, name == "gif" ? 1 : 0) << name << " accepted " << accepted << " truncations";
  }
}

TEST(DecodeImage, OverLimitIsResourceExhausted) {
  DecodeLimits limits;
  limits.max_pixels = 100;
  const cv::Mat m = Pattern(11, 10);
  for (const std::string ext : {".png", ".jpg", ".bmp", ".webp"}) {
    EXPECT_EQ(DecodeImage(Encode(m, ext), limits).status().code(), absl::StatusCode::kResourceExhausted) << ext;
  }
  EXPECT_EQ(DecodeImage(MakeGif(11, 10, Bytes(12, '\0'), {std::vector<int>(110, 0)}), limits).status().code(),
            absl::StatusCode::kResourceExhausted);
  limits.max_pixels = 110;
  EXPECT_TRUE(DecodeImage(Encode(m, ".png"), limits).ok());
}

TEST(DecodeImage, DecompressionBombIsRefusedFromTheHeader) {
  // A PNG claiming 100000 x 100000 with almost no data: refused before any
  // decoder allocates 30 GB.
  const Bytes bomb = MakePng(100000, 100000, 2, 8, 0, "");
  auto header = ProbeImage(bomb);
  ASSERT_TRUE(header.ok()) << header.status();
  EXPECT_EQ(header->width, 100000);
  EXPECT_EQ(DecodeImage(bomb).status().code(), absl::StatusCode::kResourceExhausted);
}

TEST(ProbeImage, ReadsDimensionsOfEveryFormat) {
  const cv::Mat m = Pattern(31, 7);
  for (const auto& [ext, format] : {std::pair{".png", ImageFormat::kPng}, {".jpg", ImageFormat::kJpeg},
                                    {".bmp", ImageFormat::kBmp}, {".webp", ImageFormat::kWebp}}) {
    auto h = ProbeImage(Encode(m, ext));
    ASSERT_TRUE(h.ok()) << ext << ": " << h.status();
    EXPECT_EQ(h->format, format);
    EXPECT_EQ(h->width, 31) << ext;
    EXPECT_EQ(h->height, 7) << ext;
  }
  auto lossless = ProbeImage(Encode(m, ".webp", {cv::IMWRITE_WEBP_QUALITY, 101}));
  ASSERT_TRUE(lossless.ok());
  EXPECT_EQ(lossless->width, 31);
  EXPECT_EQ(lossless->height, 7);
  auto gif = ProbeImage(MakeGif(5, 3, Bytes(12, '\0'), {std::vector<int>(15, 0)}));
  ASSERT_TRUE(gif.ok());
  EXPECT_EQ(gif->format, ImageFormat::kGif);
  EXPECT_EQ(gif->width, 5);
  EXPECT_EQ(gif->height, 3);
}

}  // namespace
}  // namespace internvl::preprocess
