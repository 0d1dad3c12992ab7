#include "core/preprocess/jpeg.h"

#include <algorithm>
#include <csetjmp>
#include <cstddef>
#include <cstdio>  // jpeglib.h needs FILE and size_t declared first

extern "C" {
#include <jpeglib.h>
}

#include "absl/strings/str_cat.h"

namespace internvl::preprocess::internal {
namespace {

// libjpeg reports fatal errors through error_exit, which must not return:
// longjmp back to the decode function. Only trivially destructible objects
// live in the frames it skips (Decode below and libjpeg's own).
struct ErrorManager {
  jpeg_error_mgr pub;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

[[noreturn]] void ErrorExit(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<ErrorManager*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->message);
  std::longjmp(err->jump, 1);
}

// Warnings and trace messages: dropped (libjpeg's default prints them).
void EmitMessage(j_common_ptr, int) {}

void CheckScans(j_common_ptr cinfo) {
  auto* d = reinterpret_cast<j_decompress_ptr>(cinfo);
  if (d->input_scan_number > kMaxJpegScans) {
    auto* err = reinterpret_cast<ErrorManager*>(cinfo->err);
    std::snprintf(err->message, sizeof(err->message), "more than %d progressive scans", kMaxJpegScans);
    std::longjmp(err->jump, 1);
  }
}

enum class Outcome { kDecoded, kUnsupported, kFailed };

// Everything between setjmp and the last libjpeg call is in this function,
// with plain-data locals only.
Outcome Decode(const unsigned char* data, unsigned long size, int width, int height, uint8_t* out,
               absl::FunctionRef<void(int)>& rows_done, ErrorManager& err) {
  jpeg_decompress_struct cinfo;
  jpeg_progress_mgr progress;
  cinfo.err = jpeg_std_error(&err.pub);
  err.pub.error_exit = ErrorExit;
  err.pub.emit_message = EmitMessage;
  err.message[0] = '\0';
  if (setjmp(err.jump)) {
    jpeg_destroy_decompress(&cinfo);
    return Outcome::kFailed;
  }
  jpeg_create_decompress(&cinfo);
  progress.progress_monitor = CheckScans;
  cinfo.progress = &progress;
  jpeg_mem_src(&cinfo, data, size);
  jpeg_read_header(&cinfo, TRUE);
  const bool supported = cinfo.num_components == 3 && cinfo.data_precision == 8 &&
                         (cinfo.jpeg_color_space == JCS_YCbCr || cinfo.jpeg_color_space == JCS_RGB) &&
                         static_cast<int>(cinfo.image_width) == width && static_cast<int>(cinfo.image_height) == height;
  if (!supported) {
    jpeg_destroy_decompress(&cinfo);
    return Outcome::kUnsupported;
  }
  cinfo.out_color_space = JCS_RGB;  // libjpeg's defaults otherwise, as Pillow
  jpeg_start_decompress(&cinfo);
  const size_t stride = static_cast<size_t>(width) * 3;
  constexpr int kMaxRows = 16;  // at least rec_outbuf_height (at most 4)
  JSAMPROW rows[kMaxRows];
  while (cinfo.output_scanline < cinfo.output_height) {
    const int first = static_cast<int>(cinfo.output_scanline);
    const int n = std::min<int>(kMaxRows, height - first);
    for (int i = 0; i < n; ++i) rows[i] = out + static_cast<size_t>(first + i) * stride;
    jpeg_read_scanlines(&cinfo, rows, static_cast<JDIMENSION>(n));
    rows_done(static_cast<int>(cinfo.output_scanline));
  }
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  return Outcome::kDecoded;
}

}  // namespace

absl::StatusOr<bool> DecodeJpegRgb(absl::string_view bytes, int width, int height, uint8_t* out,
                                   absl::FunctionRef<void(int)> rows_done) {
  if (width <= 0 || height <= 0) return absl::InvalidArgumentError("JPEG has no pixels");
  ErrorManager err;
  switch (Decode(reinterpret_cast<const unsigned char*>(bytes.data()), static_cast<unsigned long>(bytes.size()), width,
                 height, out, rows_done, err)) {
    case Outcome::kDecoded:
      return true;
    case Outcome::kUnsupported:
      return false;
    case Outcome::kFailed:
      break;
  }
  return absl::InvalidArgumentError(absl::StrCat("corrupt JPEG data: ", err.message));
}

}  // namespace internvl::preprocess::internal
