// Fuzzes what the services accept from peers: a TensorChunk stream into
// TensorAssembler (with a byte limit), and GenerationSettings through the
// validator services::FromProto.
//
// Input: one mode byte (stream encoding, byte limit, max_new_tokens limit),
// then the payload:
//   mode & 1 == 0: chunks as protobuf wire bytes, each framed by a 2-byte
//                  little-endian length (as a peer would send them);
//   mode & 1 == 1: chunks built field by field from the bytes (headers with
//                  any dtype / shape / total_bytes, offsets, data lengths).
// After the chunks (the first zero-length frame, or the end of the
// structured stream) the rest is a GenerationSettings message.
#include <fuzzer/FuzzedDataProvider.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "core/host_tensor.h"
#include "fuzz/fuzz_util.h"
#include "google/protobuf/stubs/logging.h"
#include "internvl/v1/generation.pb.h"
#include "internvl/v1/tensor.pb.h"
#include "services/common/generation.h"
#include "services/common/tensor_chunks.h"

namespace internvl::fuzz {
namespace {

constexpr uint64_t kLimits[] = {uint64_t{1} << 20, 0, 1, 64, 4096, uint64_t{1} << 16, 3, 1000};
constexpr int kMaxNewTokensLimits[] = {4096, 1, 0, std::numeric_limits<int>::max()};
// Chunks fed per input.
constexpr int kMaxChunks = 256;

// A completed tensor is consistent and survives a re-chunk round trip.
void CheckTensor(const HostTensor& t, uint64_t limit) {
  if (t.bytes.size() > limit) std::abort();
  if (t.bytes.size() != static_cast<size_t>(t.numel()) * DTypeSize(t.dtype)) std::abort();
  for (size_t chunk_bytes : {size_t{1}, size_t{7}, services::kDefaultMaxChunkBytes}) {
    auto chunks = services::ChunkTensor(t, chunk_bytes);
    if (!chunks.ok()) std::abort();
    services::TensorAssembler again(limit);
    for (const v1::TensorChunk& c : *chunks)
      if (!again.Add(c).ok()) std::abort();
    if (!again.complete()) std::abort();
    const HostTensor back = again.Take();
    if (back.dtype != t.dtype || back.shape != t.shape || back.bytes != t.bytes) std::abort();
    if (chunk_bytes == 1 && t.bytes.size() > 64) break;  // keep execs fast
  }
}

// Feeds one chunk; on error starts a fresh assembler (the documented contract).
void Feed(services::TensorAssembler& a, const v1::TensorChunk& chunk, uint64_t limit) {
  const uint64_t before = a.bytes_held();
  if (!a.Add(chunk).ok()) {
    a = services::TensorAssembler(limit);
    return;
  }
  if (a.bytes_held() > limit || a.bytes_held() < before) std::abort();
  if (a.complete()) CheckTensor(a.Take(), limit);
}

void FuzzWireChunks(FuzzedDataProvider& in, uint64_t limit) {
  services::TensorAssembler a(limit);
  for (int i = 0; i < kMaxChunks && in.remaining_bytes() >= 2; ++i) {
    const uint16_t len = in.ConsumeIntegral<uint16_t>();
    if (len == 0) break;
    const std::string bytes = in.ConsumeBytesAsString(len);
    v1::TensorChunk chunk;
    if (!chunk.ParseFromString(bytes)) continue;
    Feed(a, chunk, limit);
  }
}

int64_t Dim(FuzzedDataProvider& in) {
  switch (in.ConsumeIntegralInRange<int>(0, 3)) {
    case 0:
      return in.ConsumeIntegralInRange<int64_t>(0, 8);
    case 1:
      return in.ConsumeIntegralInRange<int64_t>(0, 1 << 12);
    case 2:
      return in.PickValueInArray<int64_t>({0, -1, std::numeric_limits<int64_t>::max(),
                                           std::numeric_limits<int64_t>::min(), int64_t{1} << 32, int64_t{1} << 62,
                                           (int64_t{1} << 61) + 1});
    default:
      return in.ConsumeIntegral<int64_t>();
  }
}

void FuzzBuiltChunks(FuzzedDataProvider& in, uint64_t limit) {
  services::TensorAssembler a(limit);
  uint64_t next_offset = 0;  // where an honest sender would continue
  for (int i = 0; i < kMaxChunks && in.remaining_bytes() > 0; ++i) {
    const uint8_t flags = in.ConsumeIntegral<uint8_t>();
    if (flags == 0xFF) break;  // end of the stream: the rest is GenerationSettings
    v1::TensorChunk chunk;
    if (flags & 0x01) {
      v1::TensorHeader* h = chunk.mutable_header();
      h->set_dtype(static_cast<v1::DataType>(in.ConsumeIntegralInRange<int>(-1, 9)));
      const int ndims = in.ConsumeIntegralInRange<int>(0, 5);
      uint64_t numel = 1;
      bool overflow = false;
      for (int d = 0; d < ndims; ++d) {
        const int64_t dim = Dim(in);
        h->add_shape(dim);
        if (dim < 0 || __builtin_mul_overflow(numel, static_cast<uint64_t>(dim), &numel)) overflow = true;
      }
      const auto dtype = services::FromProtoDataType(h->dtype());
      uint64_t honest = 0;
      if (!overflow && dtype.ok() && __builtin_mul_overflow(numel, DTypeSize(*dtype), &honest)) honest = 0;
      h->set_total_bytes((flags & 0x02) ? in.ConsumeIntegral<uint64_t>() : honest);
      next_offset = 0;
    }
    chunk.set_offset((flags & 0x04) ? in.ConsumeIntegral<uint64_t>() : next_offset);
    const size_t n =
        (flags & 0x08) ? in.ConsumeIntegralInRange<size_t>(0, 4096) : in.ConsumeIntegralInRange<size_t>(0, 64);
    chunk.set_data(in.ConsumeBytesAsString(n));
    next_offset = chunk.offset() + chunk.data().size();
    Feed(a, chunk, limit);
  }
}

void FuzzGeneration(FuzzedDataProvider& in, int limit) {
  v1::GenerationSettings proto;
  const bool structured = in.ConsumeBool();
  if (structured) {
    const uint8_t has = in.ConsumeIntegral<uint8_t>();
    auto f = [&]() {
      return in.PickValueInArray<float>(
          {0.0f, -0.0f, 1.0f, 0.5f, 1e-30f, -1.0f, 1.0000001f, 2.0f, std::numeric_limits<float>::infinity(),
           std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::denorm_min(),
           std::numeric_limits<float>::max(), in.ConsumeFloatingPoint<float>()});
    };
    if (has & 0x01) proto.set_max_new_tokens(in.ConsumeIntegral<int32_t>());
    if (has & 0x02) proto.set_do_sample(in.ConsumeBool());
    if (has & 0x04) proto.set_temperature(f());
    if (has & 0x08) proto.set_top_p(f());
    if (has & 0x10) proto.set_top_k(in.ConsumeIntegral<int32_t>());
    if (has & 0x20) proto.set_repetition_penalty(f());
    if (has & 0x40) proto.set_seed(in.ConsumeIntegral<uint64_t>());
    if (has & 0x80) proto.add_stop(in.ConsumeRandomLengthString(64));
  } else if (!proto.ParseFromString(in.ConsumeRemainingBytesAsString())) {
    return;
  }
  auto settings = services::FromProto(proto, limit);
  if (!settings.ok()) return;
  const GenerationSettings& g = *settings;
  if (g.max_new_tokens < 1 || g.max_new_tokens > limit || !(g.temperature > 0) || !std::isfinite(g.temperature) ||
      !(g.top_p > 0 && g.top_p <= 1) || g.top_k < 0 || !(g.repetition_penalty > 0) ||
      !std::isfinite(g.repetition_penalty)) {
    std::fprintf(stderr, "FromProto accepted out-of-range settings\n");
    std::abort();
  }
  // What the gateway forwards upstream must pass the decoder's check too.
  auto again = services::FromProto(services::ToProto(g), limit);
  if (!again.ok() || again->seed != g.seed || again->max_new_tokens != g.max_new_tokens) {
    std::fprintf(stderr, "validated settings do not survive ToProto -> FromProto: %s\n",
                 again.ok() ? "fields differ" : again.status().ToString().c_str());
    std::abort();
  }
  (void)services::FromProto(services::ToProto(FinishReason::kStop));
}

}  // namespace
}  // namespace internvl::fuzz

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  // Parsing logs every string field with ill-formed UTF-8 (expected here).
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace internvl::fuzz;
  if (size < 1 || size > kMaxInputBytes) return 0;
  const uint8_t mode = data[0];
  FuzzedDataProvider in(data + 1, size - 1);
  const uint64_t limit = kLimits[(mode >> 1) & 0x07];
  if (mode & 0x01) {
    FuzzBuiltChunks(in, limit);
  } else {
    FuzzWireChunks(in, limit);
  }
  FuzzGeneration(in, kMaxNewTokensLimits[(mode >> 4) & 0x03]);
  return 0;
}
