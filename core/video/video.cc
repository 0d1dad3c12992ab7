#include "core/video/video.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/status.h"

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/error.h>
#include <libavutil/mem.h>
#include <libavutil/pixdesc.h>
#include <libswscale/swscale.h>
}

namespace internvl::video {
namespace {

using preprocess::RgbImage;

// Container demuxers we accept (matched against AVInputFormat::name). Image
// demuxers (png_pipe, image2, ...), playlists (hls, concat) and raw elementary
// streams are deliberately absent: a PNG must not become a one-frame video,
// and a playlist would make FFmpeg open other files or URLs.
constexpr char kAllowedDemuxers[] = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,flv,mpegts,mpeg,ogg,asf";
// Size of the AVIOContext read buffer.
constexpr int kIoBufferSize = 64 * 1024;
// How many earlier keyframes to try when decoding forward from the nearest
// one does not produce the wanted frame (open-GOP leading pictures).
constexpr int kMaxSeekRetries = 3;

std::string AvError(int err) {
  char buf[AV_ERROR_MAX_STRING_SIZE] = {0};
  av_strerror(err, buf, sizeof(buf));
  return buf;
}

// A byte source behind a custom AVIOContext: memory or a stdio file.
class Source {
 public:
  virtual ~Source() = default;
  virtual int Read(uint8_t* buf, int size) = 0;
  // As fseek; returns the new position or a negative AVERROR.
  virtual int64_t Seek(int64_t offset, int whence) = 0;
  virtual int64_t size() const = 0;

  // Reads exactly `n` bytes at `offset`; false if the data ends first.
  bool ReadAt(int64_t offset, uint8_t* buf, int n) {
    if (Seek(offset, SEEK_SET) != offset) return false;
    while (n > 0) {
      const int got = Read(buf, n);
      if (got <= 0) return false;
      buf += got;
      n -= got;
    }
    return true;
  }

  static int ReadPacket(void* opaque, uint8_t* buf, int size) { return static_cast<Source*>(opaque)->Read(buf, size); }
  static int64_t SeekPacket(void* opaque, int64_t offset, int whence) {
    auto* self = static_cast<Source*>(opaque);
    if (whence & AVSEEK_SIZE) return self->size();
    return self->Seek(offset, whence & ~AVSEEK_FORCE);
  }

 protected:
  // Resolves fseek-style arguments against [0, size]; negative on error.
  int64_t Resolve(int64_t pos, int64_t offset, int whence) const {
    int64_t base;
    switch (whence) {
      case SEEK_SET:
        base = 0;
        break;
      case SEEK_CUR:
        base = pos;
        break;
      case SEEK_END:
        base = size();
        break;
      default:
        return AVERROR(EINVAL);
    }
    if ((offset > 0 && base > std::numeric_limits<int64_t>::max() - offset)) return AVERROR(EINVAL);
    const int64_t target = base + offset;
    if (target < 0) return AVERROR(EINVAL);
    return target;
  }
};

class MemorySource : public Source {
 public:
  explicit MemorySource(absl::string_view bytes) : bytes_(bytes) {}
  int Read(uint8_t* buf, int size) override {
    if (pos_ >= static_cast<int64_t>(bytes_.size())) return AVERROR_EOF;
    const int64_t n = std::min<int64_t>(size, static_cast<int64_t>(bytes_.size()) - pos_);
    std::memcpy(buf, bytes_.data() + pos_, static_cast<size_t>(n));
    pos_ += n;
    return static_cast<int>(n);
  }
  int64_t Seek(int64_t offset, int whence) override {
    const int64_t target = Resolve(pos_, offset, whence);
    if (target < 0) return target;
    pos_ = target;  // past the end is allowed; reads then return EOF
    return pos_;
  }
  int64_t size() const override { return static_cast<int64_t>(bytes_.size()); }

 private:
  absl::string_view bytes_;
  int64_t pos_ = 0;
};

class FileSource : public Source {
 public:
  static absl::StatusOr<std::unique_ptr<FileSource>> Open(const std::string& path) {
    std::FILE* f = std::fopen(path.c_str(), "rb");
    if (f == nullptr) {
      const int err = errno;
      const std::string msg = absl::StrCat("cannot open video file ", path, ": ", std::strerror(err));
      return err == ENOENT ? absl::NotFoundError(msg) : absl::InvalidArgumentError(msg);
    }
    auto source = std::unique_ptr<FileSource>(new FileSource(f));
    if (fseeko(f, 0, SEEK_END) != 0 || (source->size_ = ftello(f)) < 0 || fseeko(f, 0, SEEK_SET) != 0)
      return absl::InvalidArgumentError(absl::StrCat("cannot seek in video file ", path, " (not a regular file?)"));
    return source;
  }
  ~FileSource() override { std::fclose(file_); }
  int Read(uint8_t* buf, int size) override {
    const size_t n = std::fread(buf, 1, static_cast<size_t>(size), file_);
    if (n == 0) return std::ferror(file_) ? AVERROR(EIO) : AVERROR_EOF;
    return static_cast<int>(n);
  }
  int64_t Seek(int64_t offset, int whence) override {
    const int64_t target = Resolve(ftello(file_), offset, whence);
    if (target < 0) return target;
    if (fseeko(file_, target, SEEK_SET) != 0) return AVERROR(errno);
    return target;
  }
  int64_t size() const override { return size_; }

 private:
  explicit FileSource(std::FILE* f) : file_(f) {}
  std::FILE* file_;
  int64_t size_ = 0;
};

// Refuses every nested open (e.g. a demuxer following an external reference).
int DenyIoOpen(AVFormatContext* /*s*/, AVIOContext** /*pb*/, const char* url, int /*flags*/,
               AVDictionary** /*options*/) {
  return AVERROR(EPERM);
}

// MP4/MOV (ISO BMFF) files are a sequence of top-level boxes, each with its
// size up front. The mov demuxer tolerates a last box that is cut short (a
// truncated moov or mdat can still yield frames), so a file whose boxes do not
// add up to its size is refused here: it was truncated. Other containers
// report truncation while demuxing. Leaves `source` at offset 0.
absl::Status CheckIsoBmffBoxes(Source& source) {
  constexpr int kBoxHeader = 8, kLargeSize = 8;
  uint8_t head[kBoxHeader + kLargeSize];
  auto be32 = [](const uint8_t* p) {
    return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
  };
  if (!source.ReadAt(0, head, kBoxHeader) || std::memcmp(head + 4, "ftyp", 4) != 0) {
    source.Seek(0, SEEK_SET);
    return absl::OkStatus();  // not ISO BMFF (or too short to tell: FFmpeg decides)
  }
  const int64_t size = source.size();
  int64_t offset = 0;
  while (offset < size) {
    if (size - offset < kBoxHeader || !source.ReadAt(offset, head, kBoxHeader))
      return absl::InvalidArgumentError("truncated MP4: a box header is cut short");
    int64_t box = be32(head);
    if (box == 1) {  // 64-bit size follows the type
      if (!source.ReadAt(offset + kBoxHeader, head + kBoxHeader, kLargeSize))
        return absl::InvalidArgumentError("truncated MP4: a box header is cut short");
      const uint64_t large = (uint64_t{be32(head + 8)} << 32) | be32(head + 12);
      if (large > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        return absl::InvalidArgumentError("corrupt MP4: box size out of range");
      box = static_cast<int64_t>(large);
    } else if (box == 0) {  // the last box, to the end of the file
      box = size - offset;
    }
    if (box < kBoxHeader) return absl::InvalidArgumentError("corrupt MP4: a box is smaller than its header");
    if (box > size - offset)
      return absl::InvalidArgumentError(absl::StrCat("truncated MP4: box '",
                                                     std::string(reinterpret_cast<char*>(head + 4), 4), "' needs ", box,
                                                     " bytes, ", size - offset, " remain"));
    offset += box;
  }
  source.Seek(0, SEEK_SET);
  return absl::OkStatus();
}

// Matroska/WebM: the EBML header is followed by one Segment element whose
// size is stated up front (unless written live, "unknown size"). The matroska
// demuxer returns the frames present and stops at the cut, so a Segment that
// runs past the end of the data is refused here. Leaves `source` at offset 0.
absl::Status CheckMatroskaSegment(Source& source) {
  constexpr uint32_t kEbmlId = 0x1A45DFA3, kSegmentId = 0x18538067;
  constexpr int kMaxVint = 8;
  // Reads an EBML variable-length integer at `offset`: its value (marker bit
  // removed when `strip`) and length; false at the end of data or if invalid.
  auto read_vint = [&source](int64_t offset, bool strip, uint64_t* value, int* length, bool* unknown) {
    uint8_t b[kMaxVint];
    if (!source.ReadAt(offset, b, 1) || b[0] == 0) return false;
    int n = 1;
    while (!(b[0] & (0x80 >> (n - 1)))) ++n;
    if (n > 1 && !source.ReadAt(offset + 1, b + 1, n - 1)) return false;
    uint64_t v = strip ? (b[0] & ((0x80 >> (n - 1)) - 1)) : b[0];
    bool all_ones = v == static_cast<uint64_t>((0x80 >> (n - 1)) - 1);
    for (int i = 1; i < n; ++i) {
      v = (v << 8) | b[i];
      all_ones = all_ones && b[i] == 0xFF;
    }
    *value = v;
    *length = n;
    if (unknown != nullptr) *unknown = all_ones;
    return true;
  };
  uint64_t id = 0, len = 0;
  int id_len = 0, len_len = 0;
  bool unknown = false;
  const bool is_ebml = read_vint(0, false, &id, &id_len, nullptr) && id == kEbmlId;
  if (!is_ebml) {
    source.Seek(0, SEEK_SET);
    return absl::OkStatus();  // not Matroska: FFmpeg decides
  }
  const int64_t size = source.size();
  const absl::Status truncated = absl::InvalidArgumentError("truncated Matroska/WebM: the Segment is cut short");
  if (!read_vint(id_len, true, &len, &len_len, &unknown) || unknown) return truncated;
  const uint64_t header_end = static_cast<uint64_t>(id_len + len_len) + len;
  if (header_end > static_cast<uint64_t>(size)) return truncated;
  const auto segment = static_cast<int64_t>(header_end);
  if (!read_vint(segment, false, &id, &id_len, nullptr) || id != kSegmentId ||
      !read_vint(segment + id_len, true, &len, &len_len, &unknown))
    return truncated;
  if (!unknown && len > static_cast<uint64_t>(size - segment - id_len - len_len)) return truncated;
  source.Seek(0, SEEK_SET);
  return absl::OkStatus();
}

// A frame's presentation timestamp as the decoder reports it.
int64_t FrameTimestamp(const AVFrame* frame) {
  return frame->best_effort_timestamp != AV_NOPTS_VALUE ? frame->best_effort_timestamp : frame->pts;
}

// A frame's enum field (colour space, range) as the stream gave it: a corrupt
// stream can leave values outside the enum, which C++ may not load as the
// enum type (UBSan: "not a valid value for type 'enum AVColorSpace'", found
// by video_fuzzer); those read as `unspecified`. `count` is the enum's _NB.
template <typename Enum>
Enum ValidEnum(const Enum& field, int count, Enum unspecified) {
  static_assert(sizeof(Enum) == sizeof(int));
  int v;
  std::memcpy(&v, &field, sizeof(v));
  return v >= 0 && v < count ? static_cast<Enum>(v) : unspecified;
}

// As vf_scale's parse_yuv_type("auto", colorspace) (FFmpeg 5.1): the frame's
// matrix, BT.601 (BT470BG) when unspecified or unknown to swscale.
const int* YuvCoefficients(AVColorSpace colorspace) {
  int cs = colorspace;
  if (cs < 1 || cs > 10 || cs == 8) cs = AVCOL_SPC_BT470BG;
  return sws_getCoefficients(cs);
}

}  // namespace

struct VideoReader::State {
  std::unique_ptr<Source> source;
  AVIOContext* avio = nullptr;
  AVFormatContext* fmt = nullptr;
  AVCodecContext* codec = nullptr;
  SwsContext* sws = nullptr;
  AVPacket* packet = nullptr;
  AVFrame* frame = nullptr;
  int stream_index = -1;
  int64_t max_frame_pixels = 0;

  // Presentation timestamps of the frames in presentation order: frame i
  // has pts frame_pts[i] (stream time base).
  std::vector<int64_t> frame_pts;
  // Decode timestamps of the frames' packets (pts where a demuxer gives no
  // dts): demuxers seek by dts, so seeking to a keyframe's dts lands on it.
  std::vector<int64_t> frame_dts;
  // For each frame index, the index of the last keyframe at or before it
  // (-1: none, decode from the start of the stream).
  std::vector<int64_t> keyframe_before;
  // Index of the last frame the decoder returned since the last seek; -1
  // right after a seek, and after the decoder was drained (needs a seek).
  int64_t last_index = -1;
  bool drained = false;

  // The swscale parameters `sws` was set up for.
  AVColorSpace sws_colorspace = AVCOL_SPC_UNSPECIFIED;
  AVColorRange sws_range = AVCOL_RANGE_UNSPECIFIED;

  ~State() {
    sws_freeContext(sws);
    av_frame_free(&frame);
    av_packet_free(&packet);
    avcodec_free_context(&codec);
    avformat_close_input(&fmt);
    if (avio != nullptr) {
      av_freep(&avio->buffer);  // FFmpeg may have replaced the buffer we allocated
      avio_context_free(&avio);
    }
  }

  // Frame index of a decoded frame: the last frame whose pts <= the frame's.
  int64_t IndexOf(const AVFrame* f) const {
    const int64_t ts = FrameTimestamp(f);
    if (ts == AV_NOPTS_VALUE) return -1;
    auto it = std::upper_bound(frame_pts.begin(), frame_pts.end(), ts);
    if (it == frame_pts.begin()) return -1;  // before the first frame: leading picture
    return (it - frame_pts.begin()) - 1;
  }

  absl::Status SeekTo(int64_t keyframe_index) {
    avcodec_flush_buffers(codec);
    last_index = -1;
    drained = false;
    // AVSEEK_FLAG_BACKWARD: the demuxer positions at the last keyframe whose
    // (decode) timestamp is at or before the target, i.e. on this keyframe or
    // an earlier one; DecodeFrame copes with landing too late as well.
    int err =
        keyframe_index >= 0 ? av_seek_frame(fmt, stream_index, frame_dts[keyframe_index], AVSEEK_FLAG_BACKWARD) : -1;
    if (err < 0) {
      // The very start of the stream.
      const int64_t first = *std::min_element(frame_dts.begin(), frame_dts.end());
      err = avformat_seek_file(fmt, stream_index, std::numeric_limits<int64_t>::min(), first, first, 0);
    }
    if (err < 0) return absl::InvalidArgumentError(absl::StrCat("cannot seek in the video: ", AvError(err)));
    return absl::OkStatus();
  }

  // Decodes forward until frame `target` comes out. Returns false (no error)
  // when a later frame came out first (the wanted one was not decodable from
  // this seek point).
  absl::StatusOr<bool> DecodeForwardTo(int64_t target) {
    while (true) {
      int err = avcodec_receive_frame(codec, frame);
      if (err == 0) {
        const int64_t index = IndexOf(frame);
        if (index < 0) {
          av_frame_unref(frame);
          continue;
        }
        last_index = index;
        if (index == target) return true;
        av_frame_unref(frame);
        if (index > target) return false;
        continue;
      }
      if (err == AVERROR_EOF) {
        drained = true;
        return absl::InvalidArgumentError(
            absl::StrCat("video frame ", target, " could not be decoded (truncated or corrupt data)"));
      }
      if (err != AVERROR(EAGAIN)) return absl::InvalidArgumentError(absl::StrCat("corrupt video data: ", AvError(err)));
      // The decoder wants input: the next packet of our stream, or the drain
      // signal at the end of the file.
      while (true) {
        err = av_read_frame(fmt, packet);
        if (err == AVERROR_EOF) {
          avcodec_send_packet(codec, nullptr);
          break;
        }
        if (err < 0) return absl::InvalidArgumentError(absl::StrCat("cannot read the video: ", AvError(err)));
        if (packet->stream_index != stream_index) {
          av_packet_unref(packet);
          continue;
        }
        err = avcodec_send_packet(codec, packet);
        av_packet_unref(packet);
        // INVALIDDATA on one damaged packet: keep going, as the ffmpeg CLI
        // does; a frame that never comes out is reported above.
        if (err < 0 && err != AVERROR_INVALIDDATA && err != AVERROR_EOF)
          return absl::InvalidArgumentError(absl::StrCat("video decoder error: ", AvError(err)));
        break;
      }
    }
  }

  // Converts `frame` to RGB24 as `ffmpeg -pix_fmt rgb24` does: the CLI's
  // auto-inserted scale filter uses sws_flags "bicubic" (fftools' default),
  // and vf_scale sets the input matrix from the frame's colorspace
  // (in_color_matrix "auto") and the input range from the frame's range.
  absl::StatusOr<RgbImage> ToRgb() {
    if (frame->width <= 0 || frame->height <= 0)
      return absl::InvalidArgumentError("the decoder returned an empty video frame");
    if (int64_t{frame->width} * frame->height > max_frame_pixels)
      return absl::ResourceExhaustedError(absl::StrCat("video frame ", frame->width, "x", frame->height,
                                                       " exceeds the limit of ", max_frame_pixels, " pixels"));
    const auto format = static_cast<AVPixelFormat>(frame->format);
    SwsContext* next = sws_getCachedContext(sws, frame->width, frame->height, format, frame->width, frame->height,
                                            AV_PIX_FMT_RGB24, SWS_BICUBIC, nullptr, nullptr, nullptr);
    // sws_getCachedContext frees the old context when it makes a new one.
    const bool changed = next != sws;
    sws = next;
    if (next == nullptr) {
      const char* name = av_get_pix_fmt_name(format);
      return absl::InvalidArgumentError(
          absl::StrCat("unsupported video pixel format ", name != nullptr ? name : "(unknown)"));
    }
    const AVColorSpace colorspace = ValidEnum(frame->colorspace, AVCOL_SPC_NB, AVCOL_SPC_UNSPECIFIED);
    const AVColorRange range = ValidEnum(frame->color_range, AVCOL_RANGE_NB, AVCOL_RANGE_UNSPECIFIED);
    if (changed || colorspace != sws_colorspace || range != sws_range) {
      int *inv_table, *table, in_full, out_full, brightness, contrast, saturation;
      if (sws_getColorspaceDetails(sws, &inv_table, &in_full, &table, &out_full, &brightness, &contrast, &saturation) >=
          0) {
        if (range != AVCOL_RANGE_UNSPECIFIED) in_full = range == AVCOL_RANGE_JPEG;
        sws_setColorspaceDetails(sws, YuvCoefficients(colorspace), in_full, table, out_full, brightness, contrast,
                                 saturation);
      }
      sws_colorspace = colorspace;
      sws_range = range;
    }
    RgbImage out;
    out.width = frame->width;
    out.height = frame->height;
    // swscale's SIMD output paths may write past a packed row's end and past
    // the last row (FFmpeg's own tests pad the destination; an exact-size
    // buffer corrupted the heap under the video fuzzer on an AVX-512 CPU):
    // rows 64-byte aligned plus 64 bytes of slack, then packed in place.
    const size_t row_bytes = static_cast<size_t>(out.width) * preprocess::kRgbChannels;
    const size_t stride = (row_bytes + 63) / 64 * 64;
    out.data.resize(stride * static_cast<size_t>(out.height) + 64);
    uint8_t* dst[4] = {out.data.data(), nullptr, nullptr, nullptr};
    int dst_stride[4] = {static_cast<int>(stride), 0, 0, 0};
    const int rows = sws_scale(sws, frame->data, frame->linesize, 0, frame->height, dst, dst_stride);
    if (rows != frame->height)
      return absl::InternalError(absl::StrCat("swscale converted ", rows, " of ", frame->height, " rows"));
    for (size_t r = 1; r < static_cast<size_t>(out.height) && stride != row_bytes; ++r)
      std::memmove(out.data.data() + r * row_bytes, out.data.data() + r * stride, row_bytes);
    out.data.resize(row_bytes * static_cast<size_t>(out.height));
    return out;
  }

  absl::StatusOr<RgbImage> DecodeFrame(int64_t target) {
    const int64_t key = keyframe_before[target];
    // Keep decoding forward when no keyframe lies between the decoder's
    // position and the target: a seek would land no later.
    const bool can_continue = !drained && last_index >= 0 && last_index < target && key <= last_index + 1;
    if (!can_continue) INTERNVL_RETURN_IF_ERROR(SeekTo(key));
    int64_t seek_from = key;
    for (int attempt = 0;; ++attempt) {
      INTERNVL_ASSIGN_OR_RETURN(const bool found, DecodeForwardTo(target));
      if (found) {
        auto rgb = ToRgb();
        av_frame_unref(frame);
        return rgb;
      }
      // Overshot: the frame is not decodable from this seek point (or the
      // demuxer landed after it). Start from an earlier keyframe, finally
      // from the start of the stream (seek_from -1).
      if (seek_from < 0)
        return absl::InvalidArgumentError(absl::StrCat("video frame ", target, " could not be decoded"));
      seek_from = (seek_from > 0 && attempt < kMaxSeekRetries) ? keyframe_before[seek_from - 1] : -1;
      INTERNVL_RETURN_IF_ERROR(SeekTo(seek_from));
    }
  }
};

absl::StatusOr<std::vector<int64_t>> GetFrameIndices(const std::optional<TimeBound>& bound, double fps,
                                                     int64_t max_frame, int64_t first_idx, int num_segments) {
  if (num_segments < 1)
    return absl::InvalidArgumentError(absl::StrCat("num_segments must be >= 1, got ", num_segments));
  if (!std::isfinite(fps) || fps <= 0.0) return absl::InvalidArgumentError(absl::StrCat("invalid fps ", fps));
  double start = -kUnboundedSeconds, end = kUnboundedSeconds;
  if (bound.has_value()) {
    start = bound->start_seconds;
    end = bound->end_seconds;
    if (!std::isfinite(start) || !std::isfinite(end))
      return absl::InvalidArgumentError("video bound must be finite seconds");
  }
  // round() on a Python float and np.round both round half to even, which is
  // std::nearbyint under the default FE_TONEAREST rounding mode.
  const double start_idx = std::max(static_cast<double>(first_idx), std::nearbyint(start * fps));
  const double end_idx = std::min(std::nearbyint(end * fps), static_cast<double>(max_frame));
  const double seg_size = (end_idx - start_idx) / num_segments;
  std::vector<int64_t> indices(num_segments);
  for (int i = 0; i < num_segments; ++i) {
    // int(start_idx + seg_size / 2 + np.round(seg_size * idx)): truncation.
    indices[i] = static_cast<int64_t>(std::trunc(start_idx + seg_size / 2 + std::nearbyint(seg_size * i)));
  }
  return indices;
}

namespace {

absl::StatusOr<std::unique_ptr<VideoReader::State>> OpenState(std::unique_ptr<Source> source,
                                                              const VideoOptions& options, VideoInfo* info) {
  const VideoLimits& limits = options.limits;
  if (source->size() == 0) return absl::InvalidArgumentError("empty video data");
  if (source->size() > limits.max_bytes)
    return absl::ResourceExhaustedError(
        absl::StrCat("video of ", source->size(), " bytes exceeds the limit of ", limits.max_bytes, " bytes"));

  INTERNVL_RETURN_IF_ERROR(CheckIsoBmffBoxes(*source));
  INTERNVL_RETURN_IF_ERROR(CheckMatroskaSegment(*source));
  auto state = std::make_unique<VideoReader::State>();
  state->max_frame_pixels = limits.max_frame_pixels;
  state->source = std::move(source);
  auto* buffer = static_cast<uint8_t*>(av_malloc(kIoBufferSize));
  if (buffer == nullptr) return absl::ResourceExhaustedError("out of memory for the video I/O buffer");
  state->avio = avio_alloc_context(buffer, kIoBufferSize, /*write_flag=*/0, state->source.get(), &Source::ReadPacket,
                                   nullptr, &Source::SeekPacket);
  if (state->avio == nullptr) {
    av_free(buffer);
    return absl::ResourceExhaustedError("out of memory for the video I/O context");
  }
  AVFormatContext* fmt = avformat_alloc_context();
  if (fmt == nullptr) return absl::ResourceExhaustedError("out of memory for the video demuxer");
  fmt->pb = state->avio;
  fmt->flags |= AVFMT_FLAG_CUSTOM_IO;
  fmt->io_open = &DenyIoOpen;
  fmt->format_whitelist = av_strdup(kAllowedDemuxers);
  fmt->protocol_whitelist = av_strdup("none");
  // On failure avformat_open_input frees `fmt` (not our custom AVIOContext).
  if (int err = avformat_open_input(&fmt, nullptr, nullptr, nullptr); err < 0)
    return absl::InvalidArgumentError(
        absl::StrCat("not a readable video (supported containers: MP4/MOV, "
                     "Matroska/WebM, AVI, FLV, MPEG-TS/PS, Ogg, ASF): ",
                     AvError(err)));
  state->fmt = fmt;
  // avformat_find_stream_info decodes a few frames with decoders we do not
  // configure: refuse oversized frames the container header already states.
  for (unsigned i = 0; i < fmt->nb_streams; ++i) {
    const AVCodecParameters* p = fmt->streams[i]->codecpar;
    if (p->codec_type == AVMEDIA_TYPE_VIDEO && int64_t{p->width} * p->height > limits.max_frame_pixels)
      return absl::ResourceExhaustedError(absl::StrCat("video frames of ", p->width, "x", p->height,
                                                       " exceed the limit of ", limits.max_frame_pixels, " pixels"));
  }
  if (int err = avformat_find_stream_info(fmt, nullptr); err < 0)
    return absl::InvalidArgumentError(absl::StrCat("cannot read the video's stream info: ", AvError(err)));

  // The best video stream that is a real video (not cover art).
  const AVCodec* decoder = nullptr;
  int index = av_find_best_stream(fmt, AVMEDIA_TYPE_VIDEO, -1, -1, &decoder, 0);
  if (index >= 0 && (fmt->streams[index]->disposition & AV_DISPOSITION_ATTACHED_PIC)) index = -1;
  for (unsigned i = 0; index < 0 && i < fmt->nb_streams; ++i) {
    const AVStream* s = fmt->streams[i];
    if (s->codecpar->codec_type == AVMEDIA_TYPE_VIDEO && !(s->disposition & AV_DISPOSITION_ATTACHED_PIC)) {
      index = static_cast<int>(i);
      decoder = avcodec_find_decoder(s->codecpar->codec_id);
    }
  }
  if (index < 0) return absl::InvalidArgumentError("the file has no video stream");
  state->stream_index = index;
  AVStream* stream = fmt->streams[index];
  for (unsigned i = 0; i < fmt->nb_streams; ++i)
    if (static_cast<int>(i) != index) fmt->streams[i]->discard = AVDISCARD_ALL;
  if (decoder == nullptr)
    return absl::InvalidArgumentError(
        absl::StrCat("unsupported video codec ", avcodec_get_name(stream->codecpar->codec_id)));

  const AVCodecParameters* par = stream->codecpar;
  if (par->width <= 0 || par->height <= 0) return absl::InvalidArgumentError("the video stream has no frame size");
  if (int64_t{par->width} * par->height > limits.max_frame_pixels)
    return absl::ResourceExhaustedError(absl::StrCat("video frames of ", par->width, "x", par->height,
                                                     " exceed the limit of ", limits.max_frame_pixels, " pixels"));
  // decord's get_avg_fps: the stream's avg_frame_rate. Containers that do not
  // store one (rare) fall back to the stream's base rate.
  AVRational rate = stream->avg_frame_rate;
  if (rate.num <= 0 || rate.den <= 0) rate = stream->r_frame_rate;
  if (rate.num <= 0 || rate.den <= 0) return absl::InvalidArgumentError("the video stream has no frame rate");
  info->fps = av_q2d(rate);
  info->width = par->width;
  info->height = par->height;
  info->container = fmt->iformat->name;
  info->container_frame_count = std::max<int64_t>(stream->nb_frames, 0);
  info->codec = decoder->name;
  if (fmt->duration != AV_NOPTS_VALUE && fmt->duration > 0 &&
      static_cast<double>(fmt->duration) / AV_TIME_BASE > limits.max_duration_seconds)
    return absl::ResourceExhaustedError(absl::StrCat("video of ", static_cast<double>(fmt->duration) / AV_TIME_BASE,
                                                     " s exceeds the limit of ", limits.max_duration_seconds, " s"));

  state->codec = avcodec_alloc_context3(decoder);
  state->packet = av_packet_alloc();
  state->frame = av_frame_alloc();
  if (state->codec == nullptr || state->packet == nullptr || state->frame == nullptr)
    return absl::ResourceExhaustedError("out of memory for the video decoder");
  if (int err = avcodec_parameters_to_context(state->codec, par); err < 0)
    return absl::InvalidArgumentError(absl::StrCat("bad video codec parameters: ", AvError(err)));
  state->codec->pkt_timebase = stream->time_base;
  state->codec->thread_count = options.decoder_threads;
  state->codec->max_pixels = limits.max_frame_pixels;  // a second guard inside the decoder
  if (int err = avcodec_open2(state->codec, decoder, nullptr); err < 0)
    return absl::InvalidArgumentError(absl::StrCat("cannot open the ", decoder->name, " decoder: ", AvError(err)));

  // One demux pass (no decoding) numbers the frames: every packet of the
  // stream that is not marked for discarding (edit lists) is one frame.
  struct PacketInfo {
    int64_t pts;
    int64_t dts;
    bool key;
  };
  std::vector<PacketInfo> packets;
  AVPacket* pkt = state->packet;
  while (true) {
    const int err = av_read_frame(fmt, pkt);
    if (err == AVERROR_EOF) break;
    if (err < 0) return absl::InvalidArgumentError(absl::StrCat("corrupt or truncated video: ", AvError(err)));
    if (pkt->stream_index != index || (pkt->flags & AV_PKT_FLAG_DISCARD)) {
      av_packet_unref(pkt);
      continue;
    }
    const int64_t ts = pkt->pts != AV_NOPTS_VALUE ? pkt->pts : pkt->dts;
    const int64_t pkt_dts = pkt->dts;
    const bool key = pkt->flags & AV_PKT_FLAG_KEY;
    const bool corrupt = pkt->flags & AV_PKT_FLAG_CORRUPT;
    // A packet that the index places past the end of the data means the
    // file was cut short (e.g. an MP4 whose moov precedes a truncated mdat).
    const bool past_end = pkt->pos >= 0 && pkt->pos + pkt->size > state->source->size();
    av_packet_unref(pkt);
    if (corrupt || past_end)
      return absl::InvalidArgumentError(
          absl::StrCat("truncated or corrupt video: frame data ", packets.size(), " is incomplete"));
    if (ts == AV_NOPTS_VALUE) return absl::InvalidArgumentError("the video's packets carry no timestamps");
    packets.push_back({ts, pkt_dts != AV_NOPTS_VALUE ? pkt_dts : ts, key});
    if (static_cast<int64_t>(packets.size()) > limits.max_frames)
      return absl::ResourceExhaustedError(
          absl::StrCat("video has more than the limit of ", limits.max_frames, " frames"));
  }
  if (packets.empty()) return absl::InvalidArgumentError("the video has no frames");
  info->frame_count = static_cast<int64_t>(packets.size());
  if (info->frame_count / info->fps > limits.max_duration_seconds)
    return absl::ResourceExhaustedError(absl::StrCat("video of ", info->frame_count / info->fps,
                                                     " s exceeds the limit of ", limits.max_duration_seconds, " s"));

  std::stable_sort(packets.begin(), packets.end(),
                   [](const PacketInfo& a, const PacketInfo& b) { return a.pts < b.pts; });
  state->frame_pts.resize(packets.size());
  state->frame_dts.resize(packets.size());
  state->keyframe_before.resize(packets.size());
  int64_t last_key = -1;  // frames before the first keyframe: seek to the start
  for (size_t i = 0; i < packets.size(); ++i) {
    state->frame_pts[i] = packets[i].pts;
    state->frame_dts[i] = packets[i].dts;
    if (packets[i].key) last_key = static_cast<int64_t>(i);
    state->keyframe_before[i] = last_key;
  }
  // The demux pass left the demuxer at the end.
  state->last_index = -1;
  state->drained = true;
  return state;
}

}  // namespace

VideoReader::VideoReader(std::unique_ptr<State> state, VideoInfo info)
    : state_(std::move(state)), info_(std::move(info)) {}
VideoReader::~VideoReader() = default;

absl::StatusOr<std::unique_ptr<VideoReader>> VideoReader::OpenBytes(absl::string_view bytes,
                                                                    const VideoOptions& options) {
  VideoInfo info;
  INTERNVL_ASSIGN_OR_RETURN(auto state, OpenState(std::make_unique<MemorySource>(bytes), options, &info));
  return std::unique_ptr<VideoReader>(new VideoReader(std::move(state), std::move(info)));
}

absl::StatusOr<std::unique_ptr<VideoReader>> VideoReader::OpenFile(const std::string& path,
                                                                   const VideoOptions& options) {
  INTERNVL_ASSIGN_OR_RETURN(auto source, FileSource::Open(path));
  VideoInfo info;
  INTERNVL_ASSIGN_OR_RETURN(auto state, OpenState(std::move(source), options, &info));
  return std::unique_ptr<VideoReader>(new VideoReader(std::move(state), std::move(info)));
}

absl::StatusOr<std::vector<RgbImage>> VideoReader::DecodeFrames(const std::vector<int64_t>& indices) {
  for (const int64_t i : indices)
    if (i < 0 || i >= info_.frame_count)
      return absl::InvalidArgumentError(
          absl::StrCat("video frame index ", i, " is outside [0, ", info_.frame_count, ")"));
  // Decode in increasing order so that nearby frames share one seek, then
  // hand the frames back in the order asked for.
  std::vector<int64_t> order(indices);
  std::sort(order.begin(), order.end());
  order.erase(std::unique(order.begin(), order.end()), order.end());
  std::vector<RgbImage> decoded;
  decoded.reserve(order.size());
  for (const int64_t i : order) {
    INTERNVL_ASSIGN_OR_RETURN(RgbImage image, state_->DecodeFrame(i));
    decoded.push_back(std::move(image));
  }
  std::vector<RgbImage> out;
  out.reserve(indices.size());
  for (const int64_t i : indices)
    out.push_back(decoded[std::lower_bound(order.begin(), order.end(), i) - order.begin()]);
  return out;
}

namespace {

absl::StatusOr<VideoFrames> LoadFrames(VideoReader& reader, const VideoOptions& options) {
  VideoFrames result;
  result.info = reader.info();
  INTERNVL_ASSIGN_OR_RETURN(result.frame_indices,
                            GetFrameIndices(options.bound, result.info.fps, result.info.frame_count - 1,
                                            /*first_idx=*/0, options.num_segments));
  for (const int64_t i : result.frame_indices)
    if (i < 0 || i >= result.info.frame_count)
      return absl::InvalidArgumentError(
          absl::StrCat("the bound selects frame ", i, ", outside the video's ", result.info.frame_count, " frames"));
  INTERNVL_ASSIGN_OR_RETURN(std::vector<RgbImage> images, reader.DecodeFrames(result.frame_indices));
  preprocess::TilingOptions tiling;
  tiling.max_num = options.max_num;
  tiling.image_size = options.image_size;
  tiling.use_thumbnail = true;  // as load_video; a no-op for one-tile grids
  for (const RgbImage& image : images) {
    INTERNVL_ASSIGN_OR_RETURN(preprocess::Tiles tiles, preprocess::DynamicPreprocess(image, tiling));
    result.num_patches_list.push_back(tiles.count);
    if (result.tiles.count == 0) {
      result.tiles = std::move(tiles);
      continue;
    }
    result.tiles.count += tiles.count;
    result.tiles.grid = tiles.grid;
    result.tiles.has_thumbnail = tiles.has_thumbnail;
    result.tiles.data.insert(result.tiles.data.end(), tiles.data.begin(), tiles.data.end());
  }
  return result;
}

absl::Status ValidateOptions(const VideoOptions& options) {
  if (options.num_segments < 1)
    return absl::InvalidArgumentError(absl::StrCat("num_segments must be >= 1, got ", options.num_segments));
  preprocess::TilingOptions tiling;
  tiling.max_num = options.max_num;
  tiling.image_size = options.image_size;
  INTERNVL_RETURN_IF_ERROR(preprocess::ValidateTilingOptions(tiling));
  if (int64_t{options.num_segments} * options.max_num > options.limits.max_tiles)
    return absl::ResourceExhaustedError(
        absl::StrCat("num_segments * max_num = ", int64_t{options.num_segments} * options.max_num,
                     " exceeds the limit of ", options.limits.max_tiles, " tiles"));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<VideoFrames> LoadVideoFrames(absl::string_view bytes, const VideoOptions& options) {
  INTERNVL_RETURN_IF_ERROR(ValidateOptions(options));
  INTERNVL_ASSIGN_OR_RETURN(auto reader, VideoReader::OpenBytes(bytes, options));
  return LoadFrames(*reader, options);
}

absl::StatusOr<VideoFrames> LoadVideoFramesFromFile(const std::string& path, const VideoOptions& options) {
  INTERNVL_RETURN_IF_ERROR(ValidateOptions(options));
  INTERNVL_ASSIGN_OR_RETURN(auto reader, VideoReader::OpenFile(path, options));
  return LoadFrames(*reader, options);
}

}  // namespace internvl::video
