// internvl-preprocess: the Preprocess gRPC service (encoded media -> uint8
// tiles). Flags live here only; everything below takes option structs.
#include <cstdint>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "core/preprocess/runtime.h"
#include "services/common/flags.h"
#include "services/common/metrics.h"
#include "services/common/server.h"
#include "services/common/serving_limits.h"
#include "services/preprocess/preprocess_service.h"

ABSL_FLAG(std::string, listen, "0.0.0.0:50051", "gRPC address host:port (port 0 = any free port)");
ABSL_FLAG(int, metrics_port, 9090, "HTTP port for /metrics and /healthz (0 = any free port)");
ABSL_FLAG(int, threads, 2, "decode/tiling worker threads");
ABSL_FLAG(int, max_queued, internvl::services::kDefaultLimits.max_queued,
          "requests waiting for a worker before RESOURCE_EXHAUSTED");
ABSL_FLAG(int, max_images, internvl::services::kDefaultLimits.max_images, "images per request");
ABSL_FLAG(int64_t, max_image_bytes, internvl::services::kDefaultLimits.max_image_bytes, "encoded bytes per image");
ABSL_FLAG(int64_t, max_pixels, internvl::services::kDefaultLimits.max_pixels, "decoded width*height per image");
ABSL_FLAG(int64_t, max_video_bytes, internvl::services::kDefaultLimits.max_video_bytes,
          "PreprocessVideo: bytes per uploaded video");
ABSL_FLAG(int, max_segments, internvl::services::kDefaultLimits.max_segments,
          "PreprocessVideo: frames (num_segments) per video");
ABSL_FLAG(int, max_tiles, internvl::services::kDefaultLimits.max_tiles, "largest max_num a request may ask for");
ABSL_FLAG(int, default_max_num, internvl::services::kDefaultLimits.default_max_num,
          "max_num when a request leaves it 0");
ABSL_FLAG(int, image_size, internvl::kDefaultImageSize, "tile side in pixels (the model's force_image_size)");
ABSL_FLAG(int64_t, max_chunk_bytes, internvl::services::kDefaultLimits.max_chunk_bytes,
          "data bytes per streamed tensor chunk");
ABSL_FLAG(int, max_message_bytes, internvl::services::kDefaultLimits.max_message_bytes,
          "largest gRPC message received (bounds request size)");
ABSL_FLAG(std::string, tls_cert_file, "", "PEM server certificate: serve TLS (empty = plaintext)");
ABSL_FLAG(std::string, tls_key_file, "", "PEM key of --tls_cert_file");
ABSL_FLAG(std::string, tls_client_ca_file, "", "PEM CA: require client certificates it signed (mTLS)");
ABSL_FLAG(double, grace_seconds, 20, "after SIGTERM, how long in-flight calls may finish");

int main(int argc, char** argv) {
  internvl::services::BlockTerminationSignals();
  absl::SetProgramUsageMessage("The InternVL preprocess service: images -> uint8 tiles over gRPC.");
  internvl::services::NormalizedArgs args(argc, argv);
  absl::ParseCommandLine(args.argc(), args.argv());

  using namespace internvl::services;
  PreprocessServiceOptions options;
  options.limits.max_images = absl::GetFlag(FLAGS_max_images);
  options.limits.max_image_bytes = absl::GetFlag(FLAGS_max_image_bytes);
  options.limits.max_pixels = absl::GetFlag(FLAGS_max_pixels);
  options.limits.max_tiles = absl::GetFlag(FLAGS_max_tiles);
  options.limits.default_max_num = absl::GetFlag(FLAGS_default_max_num);
  options.limits.image_size = absl::GetFlag(FLAGS_image_size);
  options.max_chunk_bytes = static_cast<size_t>(absl::GetFlag(FLAGS_max_chunk_bytes));
  options.max_video_bytes = absl::GetFlag(FLAGS_max_video_bytes);
  options.max_segments = absl::GetFlag(FLAGS_max_segments);
  options.threads = absl::GetFlag(FLAGS_threads);
  options.max_queued = absl::GetFlag(FLAGS_max_queued);

  RunOptions run;
  run.grpc.listen = absl::GetFlag(FLAGS_listen);
  run.grpc.tls = {absl::GetFlag(FLAGS_tls_cert_file), absl::GetFlag(FLAGS_tls_key_file),
                  absl::GetFlag(FLAGS_tls_client_ca_file)};
  run.grpc.max_receive_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  run.metrics_port = absl::GetFlag(FLAGS_metrics_port);
  run.grace = absl::Seconds(absl::GetFlag(FLAGS_grace_seconds));

  MetricsRegistry registry;
  PreprocessService service(options, &registry);
  internvl::preprocess::WarmUpPreprocess();  // decoders and threads started before the first request
  return RunServer("internvl.v1.Preprocess", run, {&service}, {"internvl.v1.Preprocess"}, &registry);
}
