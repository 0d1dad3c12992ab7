// Video decoding for InternVL video chat, exactly as the official
// `load_video(video_path, bound=None, input_size=448, max_num=1,
// num_segments=32)` (InternVL model-card code, @2410d1d) picks and
// preprocesses frames:
//
//   vr = VideoReader(path); max_frame = len(vr) - 1; fps = vr.get_avg_fps()
//   frame_indices = get_index(bound, fps, max_frame, first_idx=0, num_segments)
//   for each index: img = Image.fromarray(vr[index].asnumpy()).convert('RGB')
//                   tiles = dynamic_preprocess(img, image_size=448,
//                                              use_thumbnail=True, max_num=max_num)
//
// Decoding uses FFmpeg (libavformat/libavcodec/libswscale):
//  - fps is the video stream's avg_frame_rate (what ffprobe reports and
//    decord's get_avg_fps returns);
//  - the frame count is the number of presentable frames of the stream,
//    found by demuxing (not decoding) every packet once; the sorted
//    presentation timestamps of those packets number the frames 0..N-1, so a
//    non-zero start_time, B-frame reordering and edit-list shifts need no
//    special case;
//  - each chosen frame is reached by seeking to the nearest preceding keyframe
//    and decoding forward (never the whole file);
//  - pixels are converted to RGB24 with swscale configured as the ffmpeg CLI's
//    `-pix_fmt rgb24` does (SWS_BICUBIC, colour matrix and range from the
//    frame), which is how the reference frames were produced.
//
// Safety: services receive untrusted bytes. Only a fixed list of container
// demuxers is allowed (no image/playlist/concat demuxers: a PNG, an HLS
// playlist or random bytes are refused), nested I/O (external references) is
// denied, and sizes are bounded by VideoLimits before pixels are allocated.
// Truncation: MP4/MOV whose top-level boxes, or Matroska/WebM whose Segment,
// run past the end of the data are refused (FFmpeg would quietly return the
// frames present); packets the demuxer flags corrupt are refused; streaming
// formats without a stated length (MPEG-TS) read as a shorter stream.
// Bad media (unreadable, not a video, no frames, truncated, corrupt) is
// INVALID_ARGUMENT; media over VideoLimits is RESOURCE_EXHAUSTED. Nothing here
// crashes on bad input.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/config.h"
#include "core/preprocess/image.h"
#include "core/preprocess/tiling.h"

namespace internvl::video {

// load_video's default frame count in PaddleMIX's chat_demo_video and our API.
inline constexpr int kDefaultNumSegments = 8;
// get_index's unbounded range: bound=None means (-100000, 100000) seconds.
inline constexpr double kUnboundedSeconds = 100000.0;

// Limits on untrusted input, checked before the corresponding work is done.
struct VideoLimits {
  // Size of the encoded video.
  int64_t max_bytes = int64_t{1} << 30;
  // Frames in the video stream (counted while demuxing).
  int64_t max_frames = int64_t{1} << 20;
  // Duration of the video stream in seconds (frames / fps).
  double max_duration_seconds = 4.0 * 3600.0;
  // width * height of one frame (checked from the stream header).
  int64_t max_frame_pixels = preprocess::kDefaultMaxImagePixels;
  // num_segments * max_num, the most tiles one request may produce.
  int64_t max_tiles = 1024;
};

// A time range in seconds, as load_video's `bound=(start, end)`.
struct TimeBound {
  double start_seconds = 0.0;
  double end_seconds = 0.0;
};

struct VideoOptions {
  int num_segments = kDefaultNumSegments;
  // Tiles per frame: dynamic_preprocess(max_num=max_num, use_thumbnail=True).
  // The official video path uses 1 (one plain 448x448 resize per frame).
  int max_num = 1;
  int image_size = kDefaultImageSize;
  std::optional<TimeBound> bound;
  VideoLimits limits;
  // libavcodec decoder threads (0 = one per core). Services decode many
  // requests concurrently, so one thread per request is the default.
  int decoder_threads = 1;
};

// What the container and a demux pass say about the video stream.
struct VideoInfo {
  double fps = 0.0;         // avg_frame_rate as a double
  int64_t frame_count = 0;  // number of presentable frames (decord's len(vr))
  // The container's own frame count (AVStream::nb_frames, e.g. the MP4
  // sample count); 0 when the container does not store one (MPEG-TS,
  // Matroska). Informational: frame_count is what the demux pass found.
  int64_t container_frame_count = 0;
  int width = 0;
  int height = 0;
  std::string container;  // demuxer name, e.g. "mov,mp4,m4a,3gp,3g2,mj2"
  std::string codec;      // decoder name, e.g. "h264"
};

// The frames load_video would feed to the model.
struct VideoFrames {
  VideoInfo info;
  std::vector<int64_t> frame_indices;  // get_index's result, one per segment
  // All frames' tiles concatenated in frame order ([sum(num_patches_list),
  // S, S, 3] uint8); `tiles.grid`/`has_thumbnail` describe the last frame
  // (identical for every frame since all frames have one size).
  preprocess::Tiles tiles;
  std::vector<int> num_patches_list;  // tiles per frame, as load_video returns
};

// The official `get_index(bound, fps, max_frame, first_idx, num_segments)`:
//   start_idx = max(first_idx, round(start * fps)); end_idx = min(round(end * fps), max_frame)
//   (start, end) = bound or (-100000, 100000);
//   seg = (end_idx - start_idx) / num_segments  (a float)
//   index_i = int(start_idx + seg / 2 + np.round(seg * i))
// Python's round() and np.round both round half to even; int() truncates
// toward zero. INVALID_ARGUMENT for num_segments < 1, a non-finite fps or
// bound. The result may fall outside [0, max_frame] for a bound beyond the
// video (as in the reference); LoadVideoFrames rejects that.
absl::StatusOr<std::vector<int64_t>> GetFrameIndices(const std::optional<TimeBound>& bound, double fps,
                                                     int64_t max_frame, int64_t first_idx, int num_segments);

// Random access to the frames of one video. Not thread-safe; cheap to create.
class VideoReader {
 public:
  // Reads from memory: `bytes` must outlive the reader.
  static absl::StatusOr<std::unique_ptr<VideoReader>> OpenBytes(absl::string_view bytes,
                                                                const VideoOptions& options = VideoOptions());
  // Reads the file at `path` (streamed, not loaded whole).
  static absl::StatusOr<std::unique_ptr<VideoReader>> OpenFile(const std::string& path,
                                                               const VideoOptions& options = VideoOptions());
  ~VideoReader();
  VideoReader(const VideoReader&) = delete;
  VideoReader& operator=(const VideoReader&) = delete;

  const VideoInfo& info() const { return info_; }

  // Decodes the frames with the given indices (0 <= index < frame_count, any
  // order, repeats allowed) as RGB24, seeking to the keyframe before each
  // frame unless decoding forward from the current position is shorter.
  // INVALID_ARGUMENT for an index out of range or a frame that cannot be
  // decoded (corrupt / truncated data).
  absl::StatusOr<std::vector<preprocess::RgbImage>> DecodeFrames(const std::vector<int64_t>& indices);

  struct State;  // FFmpeg objects, defined in video.cc

 private:
  VideoReader(std::unique_ptr<State> state, VideoInfo info);
  std::unique_ptr<State> state_;
  VideoInfo info_;
};

// load_video on encoded bytes: probes the video, picks frames with
// GetFrameIndices(options.bound, fps, frame_count - 1, 0, num_segments),
// decodes them and tiles each with DynamicPreprocess(max_num, use_thumbnail).
absl::StatusOr<VideoFrames> LoadVideoFrames(absl::string_view bytes, const VideoOptions& options = VideoOptions());
// The same for a file on disk.
absl::StatusOr<VideoFrames> LoadVideoFramesFromFile(const std::string& path,
                                                    const VideoOptions& options = VideoOptions());

}  // namespace internvl::video
