#include "services/common/stage_clients.h"

#include <algorithm>
#include <functional>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "services/common/status_map.h"

namespace internvl::services {
namespace {

// Reads (metadata, chunk) messages into items: a message with metadata
// starts a new item whose tensor the following chunks complete.
template <typename Response, typename Reader, typename Item, typename HasInfo, typename TakeInfo, typename Chunk>
absl::Status ReadItems(Reader* reader, uint64_t max_tensor_bytes, std::vector<Item>* items, HasInfo has_info,
                       TakeInfo take_info, Chunk chunk, std::function<void(const Response&)> on_message = nullptr) {
  TensorAssembler assembler(max_tensor_bytes);
  Response response;
  absl::Status status;
  while (reader->Read(&response)) {
    if (!status.ok()) continue;  // drain; the first error wins
    if (on_message) on_message(response);
    if (has_info(response)) {
      if (assembler.started()) {
        status = absl::DataLossError("a reply item started before the previous tensor completed");
        continue;
      }
      Item& item = items->emplace_back();
      take_info(response, &item);
    }
    if (items->empty()) {
      status = absl::DataLossError("reply tensor chunk without item metadata");
      continue;
    }
    status = assembler.Add(chunk(response));
    if (status.ok() && assembler.complete()) {
      HostTensor t = assembler.Take();
      if constexpr (std::is_same_v<Item, EmbeddingReply>) {
        items->back().embeddings = std::move(t);
      } else {
        items->back().tiles = std::move(t);
      }
    }
  }
  if (status.ok() && assembler.started()) status = absl::DataLossError("reply ended inside a tensor");
  return status;
}

absl::Status Finish(const grpc::Status& rpc, const absl::Status& read) {
  if (!rpc.ok()) return FromGrpcStatus(rpc);
  return read;
}

}  // namespace

absl::StatusOr<std::vector<TiledImageReply>> CallPreprocessImages(v1::Preprocess::StubInterface* stub,
                                                                  grpc::ClientContext* context,
                                                                  const v1::PreprocessImagesRequest& request,
                                                                  uint64_t max_tensor_bytes) {
  auto reader = stub->PreprocessImages(context, request);
  std::vector<TiledImageReply> items;
  const absl::Status read = ReadItems<v1::PreprocessImagesResponse>(
      reader.get(), max_tensor_bytes, &items, [](const auto& r) { return r.has_image(); },
      [](const auto& r, TiledImageReply* item) { item->info = r.image(); },
      [](const auto& r) -> const v1::TensorChunk& { return r.tiles(); });
  INTERNVL_RETURN_IF_ERROR(Finish(reader->Finish(), read));
  return items;
}

absl::StatusOr<VideoReply> CallPreprocessVideo(v1::Preprocess::StubInterface* stub, grpc::ClientContext* context,
                                               const v1::VideoSettings& settings, absl::string_view video,
                                               size_t slice_bytes, uint64_t max_tensor_bytes) {
  auto stream = stub->PreprocessVideo(context);
  size_t offset = 0;
  bool first = true;
  // A failed Write means the server already ended the call; Finish says why.
  while (first || offset < video.size()) {
    v1::PreprocessVideoRequest request;
    if (first) *request.mutable_settings() = settings;
    const size_t n = std::min(slice_bytes, video.size() - offset);
    request.set_data(video.data() + offset, n);
    offset += n;
    first = false;
    if (!stream->Write(request)) break;
  }
  stream->WritesDone();
  VideoReply reply;
  const absl::Status read = ReadItems<v1::PreprocessImagesResponse>(
      stream.get(), max_tensor_bytes, &reply.frames, [](const auto& r) { return r.has_image(); },
      [](const auto& r, TiledImageReply* item) { item->info = r.image(); },
      [](const auto& r) -> const v1::TensorChunk& { return r.tiles(); },
      [&reply](const v1::PreprocessImagesResponse& r) {
        if (r.has_video()) reply.video = r.video();
      });
  INTERNVL_RETURN_IF_ERROR(Finish(stream->Finish(), read));
  return reply;
}

absl::StatusOr<EmbeddingReply> CallEncode(v1::VisionEncoder::StubInterface* stub, grpc::ClientContext* context,
                                          const v1::EncodeHeader& header, const HostTensor& tiles, size_t chunk_bytes,
                                          uint64_t max_tensor_bytes) {
  INTERNVL_ASSIGN_OR_RETURN(std::vector<v1::TensorChunk> chunks, ChunkTensor(tiles, chunk_bytes));
  auto stream = stub->Encode(context);
  for (size_t i = 0; i < chunks.size(); ++i) {
    v1::EncodeRequest request;
    if (i == 0) *request.mutable_header() = header;
    *request.mutable_tiles() = std::move(chunks[i]);
    if (!stream->Write(request)) break;
  }
  stream->WritesDone();
  std::vector<EmbeddingReply> items;
  const absl::Status read = ReadItems<v1::EncodeResponse>(
      stream.get(), max_tensor_bytes, &items, [](const auto& r) { return r.has_info(); },
      [](const auto& r, EmbeddingReply* item) { item->info = r.info(); },
      [](const auto& r) -> const v1::TensorChunk& { return r.embeddings(); });
  INTERNVL_RETURN_IF_ERROR(Finish(stream->Finish(), read));
  if (items.size() != 1) return absl::DataLossError(absl::StrCat("Encode replied ", items.size(), " items, not 1"));
  return std::move(items[0]);
}

absl::StatusOr<std::vector<EmbeddingReply>> CallEncodeImages(v1::VisionEncoder::StubInterface* stub,
                                                             grpc::ClientContext* context,
                                                             const v1::PreprocessImagesRequest& request,
                                                             uint64_t max_tensor_bytes) {
  auto reader = stub->EncodeImages(context, request);
  std::vector<EmbeddingReply> items;
  const absl::Status read = ReadItems<v1::EncodeResponse>(
      reader.get(), max_tensor_bytes, &items, [](const auto& r) { return r.has_info(); },
      [](const auto& r, EmbeddingReply* item) { item->info = r.info(); },
      [](const auto& r) -> const v1::TensorChunk& { return r.embeddings(); });
  INTERNVL_RETURN_IF_ERROR(Finish(reader->Finish(), read));
  return items;
}

}  // namespace internvl::services
