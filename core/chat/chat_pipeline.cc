#include "core/chat/chat_pipeline.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/chat/prompt_builder.h"
#include "core/host_tensor.h"
#include "core/hub/hub_download.h"
#include "core/model_path.h"
#include "core/preprocess/runtime.h"
#include "core/preprocess/tiling.h"
#include "core/status.h"
#include "core/tokenizer/chat_template.h"
#include "core/tokenizer/stop_strings.h"
#include "core/tokenizer/streaming_detokenizer.h"
#include "core/tokenizer/tokenizer.h"
#ifdef INTERNVL_HAVE_VIDEO
#include "core/video/video.h"
#endif

namespace internvl {

using Clock = std::chrono::steady_clock;

static double Ms(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

struct ChatPipeline::Impl {
  std::string model_dir;
  PipelineOptions options;
  std::unique_ptr<PromptBuilder> prompt;  // tokenizer, template, stop ids, <IMG_CONTEXT>
  std::unique_ptr<InferenceEngine> engine;
  bool minimonkey = false;

  // Media -> uint8 tiles [N,S,S,3] (VisionBatcher::EncodeTiles normalises
  // them where the vision model runs best) + tiles per image.
  struct Pixels {
    HostTensor values;
    std::vector<int> num_patches_list;
    std::vector<int> frame_indices;
    // MiniMonkey: the first image's scale-A grid (SCM's target aspect ratio).
    preprocess::TileGrid target_aspect_ratio;
  };
  absl::StatusOr<Pixels> Preprocess(const ChatRequest& request) const;
  // The tiles of all images in one [N,S,S,3] uint8 tensor. Consumes them: a
  // lone image's (or video's) buffer becomes the tensor's, not a copy.
  static HostTensor JoinTiles(std::vector<preprocess::Tiles*> tiles);
  EngineRequest Request(std::vector<int> ids, HostTensor embeddings, const GenerationSettings& g) const;
  // INVALID_ARGUMENT for MiniMonkey settings on another model, and for SCM
  // without exactly one image.
  absl::Status CheckMiniMonkey(const ChatRequest& request) const;
  void Fill(const EngineResult& r, ChatResult* out) const;
};

ChatPipeline::ChatPipeline(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ChatPipeline::~ChatPipeline() = default;
const InternVLConfig& ChatPipeline::config() const { return impl_->engine->config(); }
bool ChatPipeline::minimonkey() const { return impl_->minimonkey; }
const tokenizer::Tokenizer& ChatPipeline::tokenizer() const { return impl_->prompt->tokenizer(); }
const std::string& ChatPipeline::model_dir() const { return impl_->model_dir; }
InferenceEngine& ChatPipeline::engine() { return *impl_->engine; }

absl::StatusOr<std::unique_ptr<ChatPipeline>> ChatPipeline::Load(const std::string& model,
                                                                 const PipelineOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  INTERNVL_ASSIGN_OR_RETURN(impl->model_dir, hub::ResolveOrDownloadModel(model));
  INTERNVL_ASSIGN_OR_RETURN(impl->prompt, PromptBuilder::Load(impl->model_dir));
  EngineOptions eo;
  eo.dtype = options.dtype;
  eo.threads = options.threads;
  eo.device = options.device;
  eo.vision_tile_batch = options.vision_tile_batch;
  eo.vision_batching = options.vision_batching;
  eo.llm = options.llm;
  INTERNVL_ASSIGN_OR_RETURN(impl->engine, InferenceEngine::Load(impl->model_dir, eo));
  impl->minimonkey = options.minimonkey || impl->engine->config().minimonkey;
  // The first image then does not pay for the decoders' and the pool's start.
  preprocess::WarmUpPreprocess();
  return std::unique_ptr<ChatPipeline>(new ChatPipeline(std::move(impl)));
}

absl::StatusOr<ChatPipeline::Impl::Pixels> ChatPipeline::Impl::Preprocess(const ChatRequest& request) const {
  Pixels out;
  const int S = engine->config().image_size();
  std::vector<preprocess::Tiles> all;
  if (request.video) {
#ifdef INTERNVL_HAVE_VIDEO
    if (!request.images.empty()) return absl::InvalidArgumentError("a request carries images or one video, not both");
    if (static_cast<int64_t>(request.video->size()) > options.max_video_bytes)
      return absl::ResourceExhaustedError(
          absl::StrCat("video is ", request.video->size(), " bytes, over the limit of ", options.max_video_bytes));
    video::VideoOptions vo;
    vo.num_segments = request.num_segments;
    vo.max_num = request.video_max_num;
    vo.image_size = S;
    vo.limits.max_bytes = options.max_video_bytes;
    INTERNVL_ASSIGN_OR_RETURN(video::VideoFrames frames, video::LoadVideoFrames(*request.video, vo));
    out.frame_indices.assign(frames.frame_indices.begin(), frames.frame_indices.end());
    out.values = JoinTiles({&frames.tiles});
    out.num_patches_list = frames.num_patches_list;
    return out;
#else
    return absl::UnimplementedError("this build has no video support");
#endif
  } else {
    if (static_cast<int>(request.images.size()) > options.max_images)
      return absl::ResourceExhaustedError(
          absl::StrCat(request.images.size(), " images, over the limit of ", options.max_images));
    if (request.max_num > options.max_tiles)
      return absl::ResourceExhaustedError(
          absl::StrCat("max_num ", request.max_num, " is over the limit of ", options.max_tiles, " tiles per image"));
    preprocess::TilingOptions tiling;
    tiling.max_num = request.max_num;
    tiling.image_size = S;
    tiling.use_thumbnail = engine->config().use_thumbnail;
    INTERNVL_RETURN_IF_ERROR(preprocess::ValidateTilingOptions(tiling));
    if (minimonkey) {  // each image tiled at two scales into one tile list
      tiling.minimonkey = request.minimonkey.value_or(preprocess::MiniMonkeyOptions());
      tiling.minimonkey->image_size = S;
      // Both scales' grids (plus one thumbnail) are one image's tiles.
      const int tiles = tiling.minimonkey->a_max + tiling.minimonkey->b_max;
      if (tiles > options.max_tiles)
        return absl::ResourceExhaustedError(absl::StrCat("MiniMonkey ranges give up to ", tiling.minimonkey->a_max,
                                                         " + ", tiling.minimonkey->b_max, " tiles, over the limit of ",
                                                         options.max_tiles));
      INTERNVL_RETURN_IF_ERROR(preprocess::ValidateTilingOptions(tiling));
    }
    for (size_t i = 0; i < request.images.size(); ++i) {
      const std::string& bytes = request.images[i];
      if (static_cast<int64_t>(bytes.size()) > options.max_image_bytes)
        return absl::ResourceExhaustedError(
            absl::StrCat("image ", i + 1, " is ", bytes.size(), " bytes, over the limit of ", options.max_image_bytes));
      auto tiles = preprocess::LoadImageTiles(bytes, tiling);
      if (!tiles.ok()) return Annotate(tiles.status(), absl::StrCat("image ", i + 1));
      if (i == 0) out.target_aspect_ratio = tiles->grid;  // MiniMonkey: scale A's grid
      all.push_back(std::move(*tiles));
    }
  }
  std::vector<preprocess::Tiles*> parts;
  for (auto& t : all) {
    if (t.count > 0) parts.push_back(&t);
    out.num_patches_list.push_back(t.count);
  }
  if (!parts.empty()) out.values = JoinTiles(parts);
  return out;
}

HostTensor ChatPipeline::Impl::JoinTiles(std::vector<preprocess::Tiles*> tiles) {
  int64_t n = 0;
  for (const auto* t : tiles) n += t->count;
  const int64_t S = tiles.empty() ? 0 : tiles[0]->size;
  HostTensor u8;
  u8.dtype = DType::kU8;
  u8.shape = {n, S, S, preprocess::kRgbChannels};
  const size_t bytes = static_cast<size_t>(n * S * S * preprocess::kRgbChannels);
  if (tiles.size() == 1 && tiles[0]->data.size() == bytes) {
    // Megabytes per image: taken over, not allocated, zeroed and copied.
    u8.bytes = std::move(tiles[0]->data);
    return u8;
  }
  u8.bytes.resize(bytes);
  uint8_t* dst = u8.data<uint8_t>();
  for (const auto* t : tiles) dst = std::copy(t->data.begin(), t->data.end(), dst);
  return u8;
}

absl::StatusOr<std::string> ChatPipeline::BuildQuery(const ChatRequest& request,
                                                     const std::vector<int>& num_patches_list) const {
  return impl_->prompt->BuildQuery(request, num_patches_list);
}

EngineRequest ChatPipeline::Impl::Request(std::vector<int> ids, HostTensor embeddings,
                                          const GenerationSettings& g) const {
  EngineRequest r;
  r.prompt_ids.assign(ids.begin(), ids.end());
  r.image_embeddings = std::move(embeddings);
  r.img_context_id = prompt->img_context_id();
  r.stop_ids = prompt->stop_ids();
  r.settings = g;
  return r;
}

absl::Status ChatPipeline::Impl::CheckMiniMonkey(const ChatRequest& request) const {
  if (!minimonkey && (request.minimonkey || request.scm))
    return absl::InvalidArgumentError(
        "MiniMonkey settings (scm, tile order, ranges) apply to MiniMonkey models only; this model is not one "
        "(serve it with --minimonkey if it is)");
  if (request.scm && (request.images.size() != 1 || request.video))
    return absl::InvalidArgumentError(
        absl::StrCat("SCM (scale compression) needs exactly one image, got ",
                     request.video ? "a video" : absl::StrCat(request.images.size(), " images")));
  return absl::OkStatus();
}

void ChatPipeline::Impl::Fill(const EngineResult& g, ChatResult* r) const {
  r->token_ids = g.token_ids;
  r->scm = g.scm;
  if (g.scm.applied) r->prompt_tokens = g.prompt_tokens;  // what was prefilled
  r->finish_reason = g.finish_reason;
  r->response = prompt->Response(r->token_ids);
  r->cached_prompt_tokens = g.cached_prompt_tokens;
  r->timings.queue_ms = g.queue_ms;
  r->timings.prefill_ms = g.prefill_ms;
  r->timings.decode_ms = g.decode_ms;
}

absl::StatusOr<ChatResult> ChatPipeline::Chat(const ChatRequest& request, const TextCallback& on_text) {
  auto& im = *impl_;
  const auto t_start = Clock::now();
  if (request.question.empty()) return absl::InvalidArgumentError("the question is empty");
  INTERNVL_RETURN_IF_ERROR(ValidateGenerationSettings(request.generation));
  INTERNVL_RETURN_IF_ERROR(tokenizer::ValidateStopStrings(request.generation.stop));
  INTERNVL_RETURN_IF_ERROR(im.CheckMiniMonkey(request));
  ChatResult result;
  INTERNVL_ASSIGN_OR_RETURN(Impl::Pixels pixels, im.Preprocess(request));
  result.timings.preprocess_ms = Ms(t_start, Clock::now());
  result.num_patches_list = pixels.num_patches_list;
  result.frame_indices = pixels.frame_indices;
  result.num_tiles = static_cast<int>(pixels.values.empty() ? 0 : pixels.values.shape[0]);
  INTERNVL_ASSIGN_OR_RETURN(std::vector<int> ids, im.prompt->PromptIds(request, pixels.num_patches_list));
  result.prompt_tokens = static_cast<int>(ids.size());
  if (result.prompt_tokens > im.options.max_prompt_tokens)  // before the vision encoder runs
    return absl::ResourceExhaustedError(absl::StrCat("the prompt is ", ids.size(), " tokens, over the limit of ",
                                                     im.options.max_prompt_tokens, " (max_prompt_tokens)"));
  HostTensor embeddings;
  if (!pixels.values.empty()) {
    const auto t0 = Clock::now();
    INTERNVL_ASSIGN_OR_RETURN(embeddings, im.engine->vision()->EncodeTiles(pixels.values));
    result.timings.vision_ms = Ms(t0, Clock::now());
    preprocess::RecycleImageBuffer(std::move(pixels.values.bytes));
  }
  EngineRequest er = im.Request(std::move(ids), std::move(embeddings), request.generation);
  if (request.scm)
    er.scm_high_tokens =
        static_cast<int64_t>(pixels.target_aspect_ratio.count()) * im.engine->config().num_image_token();
  tokenizer::StreamingDetokenizer detok(&im.prompt->tokenizer(), /*skip_special_tokens=*/true);
  // Stop strings: each token's text is checked as it comes; streamed text
  // holds back what could still become one (core/tokenizer/stop_strings.h).
  tokenizer::StopStrings stops(request.generation.stop);
  size_t shown = 0;
  bool client_gone = false;
  auto show = [&](size_t upto) {
    if (on_text && upto > shown && !client_gone) client_gone = !on_text(stops.text().substr(shown, upto - shown));
    shown = std::max(shown, upto);
  };
  const std::vector<int64_t> stop_ids = er.stop_ids;
  if (!stops.empty()) {
    er.on_token = [&](int id) {
      if (std::find(stop_ids.begin(), stop_ids.end(), id) != stop_ids.end()) return true;
      if (stops.Append(detok.Put(id))) return false;  // ends generation here
      show(stops.Safe());
      return !client_gone;
    };
  } else if (on_text) {
    // Runs on the engine's step thread while this one waits.
    er.on_token = [&](int id) {
      std::string delta = detok.Put(id);
      return delta.empty() ? true : on_text(delta);
    };
  }
  const auto t_llm = Clock::now();
  INTERNVL_ASSIGN_OR_RETURN(EngineResult g, im.engine->llm()->Generate(std::move(er)));
  std::string tail = detok.Flush();
  if (!stops.empty()) {
    if (!stops.matched()) stops.Append(tail);
    if (stops.matched()) g.finish_reason = FinishReason::kStop;
    show(stops.text().size());
  } else if (on_text && !tail.empty()) {
    on_text(tail);
  }
  im.Fill(g, &result);
  if (stops.matched()) result.response = im.prompt->ResponseText(stops.text());
  result.timings.time_to_first_token_ms = Ms(t_start, t_llm) + g.time_to_first_token_ms;
  result.timings.total_ms = Ms(t_start, Clock::now());
  return result;
}

absl::StatusOr<std::vector<ChatResult>> ChatPipeline::BatchChat(const std::vector<ChatRequest>& requests) {
  auto& im = *impl_;
  if (requests.empty()) return std::vector<ChatResult>{};
  const auto t_start = Clock::now();
  for (const auto& r : requests) {
    if (r.question.empty()) return absl::InvalidArgumentError("a question is empty");
    if (r.video) return absl::InvalidArgumentError("batch chat takes images, not videos");
    if (r.images.size() > 1) return absl::InvalidArgumentError("batch chat takes at most one image per question");
    if (!r.history.empty()) return absl::InvalidArgumentError("batch chat takes no history");
    INTERNVL_RETURN_IF_ERROR(ValidateGenerationSettings(r.generation));
    INTERNVL_RETURN_IF_ERROR(im.CheckMiniMonkey(r));
  }
  std::vector<ChatResult> out(requests.size());
  std::vector<std::vector<int>> rows;
  std::vector<Impl::Pixels> pixels;
  for (size_t i = 0; i < requests.size(); ++i) {
    const ChatRequest& r = requests[i];
    INTERNVL_ASSIGN_OR_RETURN(Impl::Pixels p, im.Preprocess(r));
    INTERNVL_ASSIGN_OR_RETURN(std::string question, im.prompt->Question(r, p.num_patches_list.size(), /*batch=*/true));
    std::string prompt = tokenizer::RenderPrompt(im.prompt->chat_template(),
                                                 r.system_message.value_or(im.prompt->system_message()), {}, question);
    INTERNVL_ASSIGN_OR_RETURN(std::string query, tokenizer::ExpandImageTokens(prompt, p.num_patches_list,
                                                                              im.engine->config().num_image_token()));
    INTERNVL_ASSIGN_OR_RETURN(std::vector<int> ids, im.prompt->tokenizer().Encode(query));
    out[i].prompt_tokens = static_cast<int>(ids.size());
    if (out[i].prompt_tokens > im.options.max_prompt_tokens)
      return absl::ResourceExhaustedError(absl::StrCat("prompt ", i + 1, " is ", ids.size(),
                                                       " tokens, over the limit of ", im.options.max_prompt_tokens));
    out[i].num_patches_list = p.num_patches_list;
    out[i].num_tiles = static_cast<int>(p.values.empty() ? 0 : p.values.shape[0]);
    rows.push_back(std::move(ids));
    pixels.push_back(std::move(p));
  }
  const double preprocess_ms = Ms(t_start, Clock::now());
  // The vision encoder batches the rows' tiles (they arrive together).
  std::vector<std::shared_ptr<GenerationHandle>> handles;
  double vision_ms = 0;
  for (size_t i = 0; i < requests.size(); ++i) {
    HostTensor embeddings;
    if (!pixels[i].values.empty()) {
      const auto t0 = Clock::now();
      INTERNVL_ASSIGN_OR_RETURN(embeddings, im.engine->vision()->EncodeTiles(pixels[i].values));
      vision_ms += Ms(t0, Clock::now());
      preprocess::RecycleImageBuffer(std::move(pixels[i].values.bytes));
    }
    EngineRequest er = im.Request(std::move(rows[i]), std::move(embeddings), requests[i].generation);
    if (requests[i].scm)  // each sequence its own selection
      er.scm_high_tokens =
          static_cast<int64_t>(pixels[i].target_aspect_ratio.count()) * im.engine->config().num_image_token();
    INTERNVL_ASSIGN_OR_RETURN(auto h, im.engine->llm()->Submit(std::move(er)));
    handles.push_back(std::move(h));
  }
  for (size_t i = 0; i < requests.size(); ++i) {
    INTERNVL_ASSIGN_OR_RETURN(EngineResult g, handles[i]->Wait());
    ChatResult& r = out[i];
    im.Fill(g, &r);
    r.timings.preprocess_ms = preprocess_ms;
    r.timings.vision_ms = vision_ms;
    r.timings.time_to_first_token_ms = preprocess_ms + vision_ms + g.time_to_first_token_ms;
    r.timings.total_ms = Ms(t_start, Clock::now());
  }
  return out;
}

}  // namespace internvl
