// Binary PPM (P6) / PGM (P5): the one image format every build decodes (the
// only one without media, INTERNVL_WITH_MEDIA=OFF). The same tests run in both
// builds; the media build also checks the results against OpenCV's decoder.
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#ifndef INTERNVL_NO_MEDIA
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#endif

#include "core/files.h"
#include "core/preprocess/image.h"
#include "core/testing/fixtures.h"
#include "gtest/gtest.h"

namespace internvl::preprocess {
namespace {

using Bytes = std::string;

// A w x h pattern with distinct values per channel, RGB interleaved.
Bytes Pattern(int w, int h, int channels) {
  Bytes px;
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      for (int c = 0; c < channels; ++c) px.push_back(static_cast<char>((x * 5 + y * 7 + c * 71) % 256));
  return px;
}

Bytes Ppm(int w, int h, const Bytes& rgb) {
  return "P6\n" + std::to_string(w) + " " + std::to_string(h) + "\n255\n" + rgb;
}
Bytes Pgm(int w, int h, const Bytes& gray) {
  return "P5\n" + std::to_string(w) + " " + std::to_string(h) + "\n255\n" + gray;
}

std::vector<uint8_t> U8(const Bytes& b) { return std::vector<uint8_t>(b.begin(), b.end()); }

TEST(Pnm, PpmDecodesToItsRgbSamples) {
  const Bytes rgb = Pattern(5, 3, 3);
  auto im = DecodeImage(Ppm(5, 3, rgb));
  ASSERT_TRUE(im.ok()) << im.status();
  EXPECT_EQ(im->width, 5);
  EXPECT_EQ(im->height, 3);
  EXPECT_EQ(im->data, U8(rgb));
}

TEST(Pnm, PgmIsReplicatedToRgb) {
  const Bytes gray = Pattern(4, 2, 1);
  auto im = DecodeImage(Pgm(4, 2, gray));
  ASSERT_TRUE(im.ok()) << im.status();
  ASSERT_EQ(im->data.size(), 4u * 2 * 3);
  for (size_t i = 0; i < gray.size(); ++i)
    for (int c = 0; c < 3; ++c) EXPECT_EQ(im->data[3 * i + c], static_cast<uint8_t>(gray[i])) << i;
}

TEST(Pnm, HeaderCommentsAndAnyWhitespaceSeparateTheFields) {
  const Bytes rgb = Pattern(2, 2, 3);
  auto im = DecodeImage("P6 # made by a test\n\t2 # width\r\n2\n# maxval next\n255 " + rgb);
  ASSERT_TRUE(im.ok()) << im.status();
  EXPECT_EQ(im->data, U8(rgb));
  // A sample value that looks like whitespace or '#' right after the header.
  const Bytes tricky = "\n#\n ##" + Bytes(6, ' ');
  im = DecodeImage(Ppm(2, 2, tricky));
  ASSERT_TRUE(im.ok()) << im.status();
  EXPECT_EQ(im->data, U8(tricky));
}

TEST(Pnm, ProbeReadsFormatAndDimensions) {
  auto h = ProbeImage(Ppm(7, 9, Pattern(7, 9, 3)));
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->format, ImageFormat::kPpm);
  EXPECT_EQ(h->width, 7);
  EXPECT_EQ(h->height, 9);
  h = ProbeImage(Pgm(3, 1, "abc"));
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->format, ImageFormat::kPgm);
  EXPECT_STREQ(ImageFormatName(h->format), "PGM");
}

TEST(Pnm, OnlyMaxval255IsAccepted) {
  for (const char* header : {"P6\n1 1\n65535\n", "P6\n1 1\n15\n", "P5\n1 1\n0\n", "P5\n1 1\n256\n"}) {
    auto s = DecodeImage(Bytes(header) + Bytes(6, '\0')).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << header;
    EXPECT_NE(s.message().find("maxval"), absl::string_view::npos) << s;
  }
}

TEST(Pnm, MalformedHeadersAreInvalidArgument) {
  for (const Bytes& bad :
       {Bytes("P6"), Bytes("P6\n"), Bytes("P61 1 255\n..."), Bytes("P6\n-1 1\n255\n..."), Bytes("P6\n1x 1\n255\n..."),
        Bytes("P6\n0 4\n255\n"), Bytes("P6\n1 1\n255#c\n..."), Bytes("P6\n99999999999 1\n255\n...")}) {
    auto im = DecodeImage(bad);
    EXPECT_EQ(im.status().code(), absl::StatusCode::kInvalidArgument) << bad << ": " << im.status();
  }
}

TEST(Pnm, EveryTruncationFailsCleanly) {
  const Bytes files[] = {Ppm(6, 4, Pattern(6, 4, 3)), Pgm(6, 4, Pattern(6, 4, 1))};
  for (const Bytes& bytes : files) {
    ASSERT_TRUE(DecodeImage(bytes).ok());
    for (size_t len = 0; len < bytes.size(); ++len) {
      auto im = DecodeImage(absl::string_view(bytes.data(), len));
      EXPECT_EQ(im.status().code(), absl::StatusCode::kInvalidArgument) << "len " << len << ": " << im.status();
    }
  }
}

TEST(Pnm, BytesAfterTheRasterAreInvalidArgument) {
  auto s = DecodeImage(Ppm(2, 2, Pattern(2, 2, 3) + "x")).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  // A second image in the same file (allowed by Netpbm) is not read either.
  s = DecodeImage(Ppm(1, 1, "abc") + Ppm(1, 1, "def")).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
}

TEST(Pnm, SizeOverTheLimitIsRefusedAtTheHeader) {
  // No raster at all: the header alone is refused, nothing is allocated.
  auto s = DecodeImage("P6\n100000 100000\n255\n").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  DecodeLimits small;
  small.max_pixels = 10;
  EXPECT_EQ(DecodeImage(Ppm(4, 3, Pattern(4, 3, 3)), small).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(DecodeImage(Ppm(5, 2, Pattern(5, 2, 3)), small).ok());
}

#ifdef INTERNVL_NO_MEDIA
TEST(Pnm, OtherFormatsAreAFailedPreconditionWithoutMedia) {
  // A PNG signature + IHDR: probed, but there is no codec to decode it.
  const Bytes png("\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR\0\0\0\x02\0\0\0\x02\x08\x02\0\0\0", 29);
  auto h = ProbeImage(png);
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->format, ImageFormat::kPng);
  auto s = DecodeImage(png).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find("INTERNVL_WITH_MEDIA=OFF"), absl::string_view::npos) << s;
  EXPECT_EQ(DecodeImage("not an image").status().code(), absl::StatusCode::kInvalidArgument);
}
#else
// OpenCV decodes PPM/PGM natively: our parser must give identical RGB.
std::vector<uint8_t> OpenCvRgb(const Bytes& bytes) {
  const cv::Mat buf(1, static_cast<int>(bytes.size()), CV_8UC1, const_cast<char*>(bytes.data()));
  const cv::Mat bgr = cv::imdecode(buf, cv::IMREAD_COLOR);
  EXPECT_FALSE(bgr.empty());
  std::vector<uint8_t> rgb;
  for (int y = 0; y < bgr.rows; ++y)
    for (int x = 0; x < bgr.cols; ++x) {
      const cv::Vec3b p = bgr.at<cv::Vec3b>(y, x);
      rgb.insert(rgb.end(), {p[2], p[1], p[0]});
    }
  return rgb;
}

TEST(Pnm, MatchesOpenCvsDecoder) {
  const Bytes files[] = {Ppm(37, 53, Pattern(37, 53, 3)), Pgm(53, 37, Pattern(53, 37, 1)),
                         "P6 # comment\n3\n2 255\n" + Pattern(3, 2, 3)};
  for (const Bytes& bytes : files) {
    auto im = DecodeImage(bytes);
    ASSERT_TRUE(im.ok()) << im.status();
    EXPECT_EQ(im->data, OpenCvRgb(bytes));
  }
}

// The PPM sidecars scripts/fixture_ppm.py writes (Pillow's convert('RGB'))
// decode to the same pixels as their PNGs; skipped where there are none
// (run with INTERNVL_FIXTURES pointing at a copy that has them).
TEST(Pnm, FixtureSidecarsMatchTheirPngs) {
  INTERNVL_REQUIRE_FIXTURES(fixtures);
  int compared = 0;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(fixtures)) {
    if (entry.path().extension() != ".png") continue;
    const std::string ppm = std::filesystem::path(entry.path()).replace_extension(".ppm").string();
    if (!std::filesystem::exists(ppm)) continue;
    auto a = DecodeImage(*ReadFile(entry.path().string()));
    auto b = DecodeImage(*ReadFile(ppm));
    ASSERT_TRUE(a.ok() && b.ok()) << entry.path();
    EXPECT_EQ(a->width, b->width) << entry.path();
    EXPECT_EQ(a->data, b->data) << entry.path();
    ++compared;
  }
  if (compared == 0) GTEST_SKIP() << "no .ppm sidecars under " << fixtures << " (scripts/fixture_ppm.py)";
  std::printf("%d fixture PNGs equal their PPM sidecars\n", compared);
}
#endif

}  // namespace
}  // namespace internvl::preprocess
