#include "core/video/video.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/files.h"
#include "core/testing/fixtures.h"
#include "gtest/gtest.h"

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/channel_layout.h>
#include <libavutil/opt.h>
}

namespace internvl::video {
namespace {

using preprocess::RgbImage;

// ---------------------------------------------------------------- get_index

std::vector<int64_t> Indices(std::optional<TimeBound> bound, double fps, int64_t max_frame, int segments) {
  auto r = GetFrameIndices(bound, fps, max_frame, 0, segments);
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *r : std::vector<int64_t>{};
}

// Expected values below were computed with the official get_index.
TEST(GetFrameIndices, UnboundedTakesTheMiddleOfEachSegment) {
  EXPECT_EQ(Indices(std::nullopt, 25, 124, 8), (std::vector<int64_t>{7, 23, 38, 53, 69, 85, 100, 115}));
  EXPECT_EQ(Indices(std::nullopt, 25, 124, 4), (std::vector<int64_t>{15, 46, 77, 108}));
  EXPECT_EQ(Indices(std::nullopt, 29.97, 299, 8), (std::vector<int64_t>{18, 55, 93, 130, 168, 205, 242, 280}));
  EXPECT_EQ(Indices(std::nullopt, 24, 20, 8), (std::vector<int64_t>{1, 3, 6, 9, 11, 13, 16, 19}));
}

TEST(GetFrameIndices, RoundsHalfToEvenLikeNumpy) {
  // seg = 0.5: np.round(0.5) = 0, np.round(1.5) = 2, np.round(2.5) = 2.
  // Rounding half away from zero would give {0, 1, 1, 2, 2, 3, 3, 4}.
  EXPECT_EQ(Indices(std::nullopt, 25, 4, 8), (std::vector<int64_t>{0, 0, 1, 2, 2, 2, 3, 4}));
}

TEST(GetFrameIndices, MoreSegmentsThanFramesRepeatFrames) {
  EXPECT_EQ(Indices(std::nullopt, 25, 0, 3), (std::vector<int64_t>{0, 0, 0}));
}

TEST(GetFrameIndices, BoundSelectsASpanInSeconds) {
  EXPECT_EQ(Indices(TimeBound{1.0, 3.0}, 25, 124, 4), (std::vector<int64_t>{31, 43, 56, 69}));
  // The end is clamped to max_frame.
  EXPECT_EQ(Indices(TimeBound{0.5, 100.0}, 25, 124, 8), (std::vector<int64_t>{19, 33, 47, 61, 75, 89, 103, 117}));
  // round(0.02 * 25) = round(0.5) = 0 and round(2.5) = 2 (half to even).
  EXPECT_EQ(Indices(TimeBound{0.02, 0.1}, 25, 124, 2), (std::vector<int64_t>{0, 1}));
  // round(1.5) = 2, round(7.5) = 8.
  EXPECT_EQ(Indices(TimeBound{0.06, 0.3}, 25, 124, 2), (std::vector<int64_t>{3, 6}));
}

TEST(GetFrameIndices, RejectsBadArguments) {
  EXPECT_EQ(GetFrameIndices(std::nullopt, 25, 124, 0, 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(GetFrameIndices(std::nullopt, 0, 124, 0, 8).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(GetFrameIndices(std::nullopt, NAN, 124, 0, 8).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(GetFrameIndices(TimeBound{0, INFINITY}, 25, 124, 0, 8).status().code(), absl::StatusCode::kInvalidArgument);
}

// ------------------------------------------------------ generated test videos

// Frame i of a generated video is flat grey with luma kBaseLuma + kLumaStep*i,
// so a decoded frame tells which frame it is.
constexpr int kBaseLuma = 20;
constexpr int kLumaStep = 4;
constexpr int kNeutralChroma = 128;

struct TestVideo {
  std::string muxer = "mp4";
  int frames = 40;
  int fps = 10;
  int gop = 10;
  int b_frames = 2;
  int width = 64;
  int height = 48;
  int64_t first_pts = 0;  // in frames
  bool faststart = false;
  int row_step = 0;  // luma added per row (a vertical ramp; 0: flat frames)
};

std::string AvErr(int err) {
  char buf[AV_ERROR_MAX_STRING_SIZE] = {0};
  av_strerror(err, buf, sizeof(buf));
  return buf;
}

// Encodes `spec` with libavcodec's mpeg4 encoder into a file; returns its bytes.
absl::StatusOr<std::string> MakeVideo(const TestVideo& spec) {
  static int counter = 0;
  const std::string path = absl::StrCat(testing::TempDir(), "/v", counter++, ".", spec.muxer);
  AVFormatContext* oc = nullptr;
  if (int err = avformat_alloc_output_context2(&oc, nullptr, spec.muxer.c_str(), path.c_str()); err < 0)
    return absl::InternalError(AvErr(err));
  const AVCodec* codec = avcodec_find_encoder(AV_CODEC_ID_MPEG4);
  AVStream* st = avformat_new_stream(oc, nullptr);
  AVCodecContext* enc = avcodec_alloc_context3(codec);
  enc->width = spec.width;
  enc->height = spec.height;
  enc->pix_fmt = AV_PIX_FMT_YUV420P;
  enc->time_base = AVRational{1, spec.fps};
  enc->framerate = AVRational{spec.fps, 1};
  enc->gop_size = spec.gop;
  enc->max_b_frames = spec.b_frames;
  enc->flags |= AV_CODEC_FLAG_QSCALE;
  enc->global_quality = FF_QP2LAMBDA * 2;
  if (oc->oformat->flags & AVFMT_GLOBALHEADER) enc->flags |= AV_CODEC_FLAG_GLOBAL_HEADER;
  absl::Status status;
  AVPacket* pkt = av_packet_alloc();
  AVFrame* frame = av_frame_alloc();
  AVDictionary* opts = nullptr;
  if (spec.faststart) av_dict_set(&opts, "movflags", "faststart", 0);
  auto drain = [&]() {
    while (avcodec_receive_packet(enc, pkt) == 0) {
      // One frame each, as the ffmpeg CLI sets it: without a duration the
      // MP4 muxer's edit list drops the last frame.
      if (pkt->duration == 0) pkt->duration = 1;
      av_packet_rescale_ts(pkt, enc->time_base, st->time_base);
      pkt->stream_index = st->index;
      av_interleaved_write_frame(oc, pkt);
    }
  };
  int err = avcodec_open2(enc, codec, nullptr);
  if (err >= 0) err = avcodec_parameters_from_context(st->codecpar, enc);
  st->time_base = enc->time_base;
  if (err >= 0) err = avio_open(&oc->pb, path.c_str(), AVIO_FLAG_WRITE);
  if (err >= 0) err = avformat_write_header(oc, &opts);
  if (err >= 0) {
    frame->format = enc->pix_fmt;
    frame->width = enc->width;
    frame->height = enc->height;
    err = av_frame_get_buffer(frame, 0);
  }
  for (int i = 0; err >= 0 && i < spec.frames; ++i) {
    av_frame_make_writable(frame);
    for (int y = 0; y < spec.height; ++y)
      std::fill_n(frame->data[0] + y * frame->linesize[0], spec.width, kBaseLuma + kLumaStep * i + spec.row_step * y);
    for (int p = 1; p <= 2; ++p)
      for (int y = 0; y < spec.height / 2; ++y)
        std::fill_n(frame->data[p] + y * frame->linesize[p], spec.width / 2, kNeutralChroma);
    frame->pts = spec.first_pts + i;
    err = avcodec_send_frame(enc, frame);
    drain();
  }
  if (err >= 0) {
    avcodec_send_frame(enc, nullptr);
    drain();
    err = av_write_trailer(oc);
  }
  if (err < 0) status = absl::InternalError(absl::StrCat("writing the test video: ", AvErr(err)));
  av_dict_free(&opts);
  av_frame_free(&frame);
  av_packet_free(&pkt);
  avcodec_free_context(&enc);
  avio_closep(&oc->pb);
  avformat_free_context(oc);
  if (!status.ok()) return status;
  return ReadFile(path);
}

// An audio-only Matroska file (PCM, no encoder needed).
absl::StatusOr<std::string> MakeAudioOnly() {
  const std::string path = absl::StrCat(testing::TempDir(), "/audio.mkv");
  AVFormatContext* oc = nullptr;
  if (int err = avformat_alloc_output_context2(&oc, nullptr, "matroska", path.c_str()); err < 0)
    return absl::InternalError(AvErr(err));
  AVStream* st = avformat_new_stream(oc, nullptr);
  st->codecpar->codec_type = AVMEDIA_TYPE_AUDIO;
  st->codecpar->codec_id = AV_CODEC_ID_PCM_S16LE;
  st->codecpar->sample_rate = 8000;
  av_channel_layout_default(&st->codecpar->ch_layout, 1);
  st->time_base = AVRational{1, 8000};
  int err = avio_open(&oc->pb, path.c_str(), AVIO_FLAG_WRITE);
  if (err >= 0) err = avformat_write_header(oc, nullptr);
  constexpr int kSamples = 800;
  for (int i = 0; err >= 0 && i < 10; ++i) {
    AVPacket* pkt = av_packet_alloc();
    av_new_packet(pkt, kSamples * 2);
    std::fill_n(pkt->data, kSamples * 2, 0);
    pkt->pts = pkt->dts = av_rescale_q(int64_t{i} * kSamples, AVRational{1, 8000}, st->time_base);
    pkt->stream_index = 0;
    err = av_interleaved_write_frame(oc, pkt);
    av_packet_free(&pkt);
  }
  if (err >= 0) err = av_write_trailer(oc);
  avio_closep(&oc->pb);
  avformat_free_context(oc);
  if (err < 0) return absl::InternalError(AvErr(err));
  return ReadFile(path);
}

// Which generated frame a decoded frame is (from its mean red value).
int FrameNumber(const RgbImage& image) {
  double sum = 0;
  for (size_t i = 0; i < image.data.size(); i += 3) sum += image.data[i];
  const double r = sum / (image.data.size() / 3);
  const double luma = r * 219.0 / 255.0 + 16.0;  // BT.601 limited range
  return static_cast<int>(std::lround((luma - kBaseLuma) / kLumaStep));
}

std::string Generated(const TestVideo& spec) {
  auto bytes = MakeVideo(spec);
  EXPECT_TRUE(bytes.ok()) << bytes.status();
  return bytes.ok() ? *bytes : std::string();
}

std::vector<int> DecodedNumbers(absl::string_view bytes, const std::vector<int64_t>& indices) {
  auto reader = VideoReader::OpenBytes(bytes);
  EXPECT_TRUE(reader.ok()) << reader.status();
  if (!reader.ok()) return {};
  auto frames = (*reader)->DecodeFrames(indices);
  EXPECT_TRUE(frames.ok()) << frames.status();
  if (!frames.ok()) return {};
  std::vector<int> out;
  for (const RgbImage& f : *frames) out.push_back(FrameNumber(f));
  return out;
}

std::vector<int> AsInts(const std::vector<int64_t>& v) { return std::vector<int>(v.begin(), v.end()); }

TEST(VideoReader, SeeksToTheRequestedFramesWithBFrames) {
  const std::string bytes = Generated(TestVideo{});
  auto reader = VideoReader::OpenBytes(bytes);
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_EQ((*reader)->info().frame_count, 40);
  EXPECT_EQ((*reader)->info().fps, 10.0);
  EXPECT_EQ((*reader)->info().width, 64);
  EXPECT_EQ((*reader)->info().codec, "mpeg4");
  // Out of order, repeated, across GOP boundaries (keyframes every 10).
  const std::vector<int64_t> picks = {39, 0, 25, 25, 10, 9, 11, 1, 38};
  EXPECT_EQ(DecodedNumbers(bytes, picks), AsInts(picks));
  std::vector<int64_t> all(40);
  for (int i = 0; i < 40; ++i) all[i] = i;
  EXPECT_EQ(DecodedNumbers(bytes, all), AsInts(all));
}

TEST(VideoReader, RowsOfWidthsOffTheConversionAlignment) {
  // swscale converts into padded rows that are then packed: 34 pixels (102
  // bytes a row, 128 padded) with a vertical luma ramp must come out with
  // each row flat and the ramp intact (a row packed from the wrong offset
  // mixes rows several ramp steps apart).
  TestVideo spec;
  spec.width = 34;
  spec.frames = 2;
  spec.b_frames = 0;
  spec.row_step = 4;
  const std::string bytes = Generated(spec);
  auto reader = VideoReader::OpenBytes(bytes);
  ASSERT_TRUE(reader.ok()) << reader.status();
  auto frames = (*reader)->DecodeFrames({0, 1});
  ASSERT_TRUE(frames.ok()) << frames.status();
  for (const auto& f : *frames) {
    ASSERT_EQ(f.width, 34);
    ASSERT_EQ(f.data.size(), size_t{34} * f.height * 3);
    std::vector<double> means;
    for (int y = 0; y < f.height; ++y) {
      const uint8_t* row = f.data.data() + static_cast<size_t>(y) * 34 * 3;
      const auto [lo, hi] = std::minmax_element(row, row + 34 * 3);
      EXPECT_LE(*hi - *lo, 12) << "row " << y;
      means.push_back(std::accumulate(row, row + 34 * 3, 0.0) / (34 * 3));
    }
    // The ramp: 4 luma steps per row, 4 * 255 / 219 in full-range RGB; a
    // row packed from the wrong offset shows another row's value.
    const int n = static_cast<int>(means.size());
    double sy = 0, sm = 0, syy = 0, sym = 0;
    for (int y = 0; y < n; ++y) sy += y, sm += means[y], syy += double{1} * y * y, sym += y * means[y];
    const double slope = (n * sym - sy * sm) / (n * syy - sy * sy), offset = (sm - slope * sy) / n;
    EXPECT_NEAR(slope, 4 * 255.0 / 219, 0.3);
    for (int y = 0; y < n; ++y) EXPECT_NEAR(means[y], offset + slope * y, 6) << "row " << y;
  }
}

TEST(VideoReader, NumbersFramesFromANonZeroStartTime) {
  // MPEG-TS delays timestamps by 1.4 s and stores no frame count; Matroska
  // keeps the encoder's first pts (5 s here).
  for (const char* muxer : {"mpegts", "matroska"}) {
    SCOPED_TRACE(muxer);
    TestVideo spec;
    spec.muxer = muxer;
    spec.first_pts = 50;
    const std::string bytes = Generated(spec);
    auto reader = VideoReader::OpenBytes(bytes);
    ASSERT_TRUE(reader.ok()) << reader.status();
    EXPECT_EQ((*reader)->info().frame_count, 40);
    EXPECT_EQ((*reader)->info().fps, 10.0);
    const std::vector<int64_t> picks = {0, 39, 17, 20, 3};
    EXPECT_EQ(DecodedNumbers(bytes, picks), AsInts(picks));
  }
}

TEST(LoadVideoFrames, PicksGetIndexFramesAndTilesEach) {
  const std::string bytes = Generated(TestVideo{});
  VideoOptions options;
  options.num_segments = 4;
  auto loaded = LoadVideoFrames(bytes, options);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  // get_index(None, 10, 39, 0, 4): seg 9.75 -> 4, 14, 24, 33.
  EXPECT_EQ(loaded->frame_indices, (std::vector<int64_t>{4, 14, 24, 33}));
  EXPECT_EQ(loaded->num_patches_list, (std::vector<int>{1, 1, 1, 1}));
  EXPECT_EQ(loaded->tiles.count, 4);
  EXPECT_EQ(loaded->tiles.size, kDefaultImageSize);
  EXPECT_FALSE(loaded->tiles.has_thumbnail);
  EXPECT_EQ(loaded->tiles.data.size(), 4 * loaded->tiles.tile_bytes());

  // A larger max_num tiles each frame like an image (64x48 -> 1x1 grid here,
  // so still one tile per frame, plus no thumbnail).
  options.max_num = 6;
  auto six = LoadVideoFrames(bytes, options);
  ASSERT_TRUE(six.ok()) << six.status();
  EXPECT_EQ(six->num_patches_list.size(), 4u);
}

TEST(LoadVideoFrames, BoundSelectsTheSpan) {
  const std::string bytes = Generated(TestVideo{});
  VideoOptions options;
  options.num_segments = 4;
  options.bound = TimeBound{1.0, 3.0};  // frames 10..30 at 10 fps: seg 5
  auto loaded = LoadVideoFrames(bytes, options);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->frame_indices, (std::vector<int64_t>{12, 17, 22, 27}));
  options.bound = TimeBound{10.0, 20.0};  // past the end of a 4 s video
  EXPECT_EQ(LoadVideoFrames(bytes, options).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(LoadVideoFrames, MemoryAndFileGiveTheSameTiles) {
  const std::string bytes = Generated(TestVideo{});
  const std::string path = absl::StrCat(testing::TempDir(), "/same.mp4");
  ASSERT_TRUE(WriteFileAtomic(path, bytes).ok());
  auto from_memory = LoadVideoFrames(bytes);
  auto from_file = LoadVideoFramesFromFile(path);
  ASSERT_TRUE(from_memory.ok()) << from_memory.status();
  ASSERT_TRUE(from_file.ok()) << from_file.status();
  EXPECT_EQ(from_memory->frame_indices, from_file->frame_indices);
  EXPECT_EQ(from_memory->tiles.data, from_file->tiles.data);
  EXPECT_EQ(LoadVideoFramesFromFile(path + ".missing").status().code(), absl::StatusCode::kNotFound);
}

// ------------------------------------------------------------------- errors

void ExpectInvalid(absl::string_view bytes, absl::string_view what) {
  auto loaded = LoadVideoFrames(bytes);
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kInvalidArgument) << what << ": " << loaded.status();
}

TEST(LoadVideoFrames, RejectsEmptyAndRandomBytes) {
  ExpectInvalid("", "empty");
  std::string noise(4096, '\0');
  uint32_t x = 12345;
  for (char& c : noise) c = static_cast<char>((x = x * 1664525u + 1013904223u) >> 24);
  ExpectInvalid(noise, "random bytes");
}

TEST(LoadVideoFrames, RejectsAnImage) {
  // A PNG is a valid FFmpeg input (png_pipe: one frame), but not a video.
  const AVCodec* png = avcodec_find_encoder(AV_CODEC_ID_PNG);
  ASSERT_NE(png, nullptr);
  AVCodecContext* enc = avcodec_alloc_context3(png);
  enc->width = 16;
  enc->height = 16;
  enc->pix_fmt = AV_PIX_FMT_RGB24;
  enc->time_base = AVRational{1, 1};
  ASSERT_GE(avcodec_open2(enc, png, nullptr), 0);
  AVFrame* frame = av_frame_alloc();
  frame->format = AV_PIX_FMT_RGB24;
  frame->width = frame->height = 16;
  ASSERT_GE(av_frame_get_buffer(frame, 0), 0);
  for (int y = 0; y < 16; ++y) std::fill_n(frame->data[0] + y * frame->linesize[0], 16 * 3, 200);
  AVPacket* pkt = av_packet_alloc();
  ASSERT_GE(avcodec_send_frame(enc, frame), 0);
  ASSERT_GE(avcodec_receive_packet(enc, pkt), 0);
  const std::string bytes(reinterpret_cast<const char*>(pkt->data), pkt->size);
  av_packet_free(&pkt);
  av_frame_free(&frame);
  avcodec_free_context(&enc);
  ASSERT_EQ(bytes.substr(1, 3), "PNG");
  ExpectInvalid(bytes, "PNG");
}

TEST(LoadVideoFrames, RejectsAudioOnlyFiles) {
  auto audio = MakeAudioOnly();
  ASSERT_TRUE(audio.ok()) << audio.status();
  auto loaded = LoadVideoFrames(*audio);
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kInvalidArgument) << loaded.status();
  EXPECT_NE(loaded.status().message().find("no video stream"), std::string::npos) << loaded.status();
}

TEST(LoadVideoFrames, RejectsTruncatedFiles) {
  // MP4 with moov after mdat (the ffmpeg default, as the fixture) and with
  // moov first (faststart: the index then points past the data), Matroska.
  struct Case {
    const char* muxer;
    bool faststart;
  };
  for (const Case& c : {Case{"mp4", false}, Case{"mp4", true}, Case{"matroska", false}}) {
    TestVideo spec;
    spec.muxer = c.muxer;
    spec.faststart = c.faststart;
    const std::string bytes = Generated(spec);
    ASSERT_FALSE(bytes.empty());
    ASSERT_TRUE(LoadVideoFrames(bytes).ok());
    for (const double keep : {0.1, 0.5, 0.9, 0.99}) {
      const std::string cut = bytes.substr(0, static_cast<size_t>(bytes.size() * keep));
      ExpectInvalid(cut, absl::StrCat(c.muxer, c.faststart ? " faststart" : "", " cut to ", keep));
    }
  }
}

// MPEG-TS has no header stating its length (it is made for streaming): a cut
// one is a shorter stream, and every frame we count must still decode, in
// presentation order. (The cut can fall between a P-frame and the B-frames
// shown before it, so the frames present need not be a prefix.)
TEST(LoadVideoFrames, CutMpegTsIsAShorterStream) {
  TestVideo spec;
  spec.muxer = "mpegts";
  const std::string bytes = Generated(spec);
  const std::string cut = bytes.substr(0, bytes.size() / 2);
  auto reader = VideoReader::OpenBytes(cut);
  ASSERT_TRUE(reader.ok()) << reader.status();
  const int64_t n = (*reader)->info().frame_count;
  EXPECT_GT(n, 0);
  EXPECT_LT(n, spec.frames);
  std::vector<int64_t> all(n);
  for (int64_t i = 0; i < n; ++i) all[i] = i;
  const std::vector<int> numbers = DecodedNumbers(cut, all);
  ASSERT_EQ(numbers.size(), all.size());
  EXPECT_TRUE(std::is_sorted(numbers.begin(), numbers.end())) << ::testing::PrintToString(numbers);
  EXPECT_EQ(std::adjacent_find(numbers.begin(), numbers.end()), numbers.end()) << "a frame repeats";
  EXPECT_EQ(numbers.front(), 0);
}

TEST(LoadVideoFrames, EnforcesLimits) {
  const std::string bytes = Generated(TestVideo{});  // 40 frames, 64x48, 4 s
  ASSERT_TRUE(LoadVideoFrames(bytes).ok());
  auto expect_exhausted = [&](VideoOptions options, const char* what) {
    EXPECT_EQ(LoadVideoFrames(bytes, options).status().code(), absl::StatusCode::kResourceExhausted) << what;
  };
  VideoOptions o;
  o.limits.max_bytes = static_cast<int64_t>(bytes.size()) - 1;
  expect_exhausted(o, "bytes");
  o = VideoOptions();
  o.limits.max_frames = 39;
  expect_exhausted(o, "frames");
  o = VideoOptions();
  o.limits.max_frame_pixels = 64 * 48 - 1;
  expect_exhausted(o, "pixels");
  o = VideoOptions();
  o.limits.max_duration_seconds = 3.5;
  expect_exhausted(o, "duration");
  o = VideoOptions();
  o.limits.max_tiles = 7;
  expect_exhausted(o, "tiles");
}

TEST(LoadVideoFrames, RejectsBadOptions) {
  const std::string bytes = Generated(TestVideo{});
  VideoOptions o;
  o.num_segments = 0;
  EXPECT_EQ(LoadVideoFrames(bytes, o).status().code(), absl::StatusCode::kInvalidArgument);
  o = VideoOptions();
  o.max_num = 0;
  EXPECT_EQ(LoadVideoFrames(bytes, o).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(VideoReader, RejectsFrameIndicesOutOfRange) {
  const std::string bytes = Generated(TestVideo{});
  auto reader = VideoReader::OpenBytes(bytes);
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_EQ((*reader)->DecodeFrames({40}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*reader)->DecodeFrames({-1}).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace internvl::video
