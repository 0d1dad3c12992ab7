#include "core/chat/chat_pipeline.h"

#include <ATen/ATen.h>

#include <chrono>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/chat/llm_engine.h"
#include "core/chat/prompt_builder.h"
#include "core/host_tensor.h"
#include "core/llm/causal_lm.h"
#include "core/llm/generate.h"
#include "core/hub/hub_download.h"
#include "core/model_path.h"
#include "core/nn/torch_util.h"
#include "core/preprocess/tiling.h"
#include "core/status.h"
#include "core/tokenizer/chat_template.h"
#include "core/tokenizer/streaming_detokenizer.h"
#include "core/tokenizer/tokenizer.h"
#include "core/vision/vision_model.h"
#include "core/vision/vision_model_torch.h"
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
  InternVLConfig config;
  std::unique_ptr<PromptBuilder> prompt;  // tokenizer, template, stop ids, <IMG_CONTEXT>
  std::unique_ptr<VisionModel> vision;
  std::unique_ptr<llm::CausalLM> lm;

  // Media -> normalised pixel values [N,3,S,S] + tiles per image.
  struct Pixels {
    HostTensor values;
    std::vector<int> num_patches_list;
    std::vector<int> frame_indices;
  };
  absl::StatusOr<Pixels> Preprocess(const ChatRequest& request) const;
  absl::StatusOr<at::Tensor> Embeddings(const std::vector<int64_t>& flat_ids, int64_t batch, int64_t len,
                                        const Pixels& pixels, ChatTimings& timings) const;
  llm::SamplingParams Sampling(const GenerationSettings& g) const;
};

ChatPipeline::ChatPipeline(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ChatPipeline::~ChatPipeline() = default;
const InternVLConfig& ChatPipeline::config() const { return impl_->config; }
const tokenizer::Tokenizer& ChatPipeline::tokenizer() const { return impl_->prompt->tokenizer(); }
const std::string& ChatPipeline::model_dir() const { return impl_->model_dir; }

absl::StatusOr<std::unique_ptr<ChatPipeline>> ChatPipeline::Load(const std::string& model,
                                                                 const PipelineOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  INTERNVL_ASSIGN_OR_RETURN(impl->model_dir, hub::ResolveOrDownloadModel(model));
  INTERNVL_ASSIGN_OR_RETURN(impl->config, LoadInternVLConfig(impl->model_dir));
  INTERNVL_ASSIGN_OR_RETURN(impl->prompt, PromptBuilder::Load(impl->model_dir));
  SetTorchThreads(options.threads);
  INTERNVL_ASSIGN_OR_RETURN(at::ScalarType requested, ParseComputeDType(options.dtype));
  INTERNVL_ASSIGN_OR_RETURN(auto store, TensorStore::OpenDir(impl->model_dir));
  INTERNVL_ASSIGN_OR_RETURN(impl->vision,
                            VisionModel::Load(impl->config, *store,
                                              VisionOptions{.dtype = options.dtype, .tile_batch = options.vision_tile_batch}));
  INTERNVL_ASSIGN_OR_RETURN(impl->lm,
                            llm::CausalLM::Load(impl->config.llm, *store, llm::Precision::ForRequested(requested)));
  return std::unique_ptr<ChatPipeline>(new ChatPipeline(std::move(impl)));
}

absl::StatusOr<ChatPipeline::Impl::Pixels> ChatPipeline::Impl::Preprocess(const ChatRequest& request) const {
  Pixels out;
  const int S = config.image_size();
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
    out.values = HostTensor(DType::kF32, {frames.tiles.count, 3, S, S});
    preprocess::NormalizeTiles(frames.tiles, out.values.data<float>());
    out.num_patches_list = frames.num_patches_list;
    return out;
#else
    return absl::UnimplementedError("this build has no video support");
#endif
  } else {
    if (static_cast<int>(request.images.size()) > options.max_images)
      return absl::ResourceExhaustedError(
          absl::StrCat(request.images.size(), " images, over the limit of ", options.max_images));
    preprocess::TilingOptions tiling;
    tiling.max_num = request.max_num;
    tiling.image_size = S;
    tiling.use_thumbnail = config.use_thumbnail;
    INTERNVL_RETURN_IF_ERROR(preprocess::ValidateTilingOptions(tiling));
    for (size_t i = 0; i < request.images.size(); ++i) {
      const std::string& bytes = request.images[i];
      if (static_cast<int64_t>(bytes.size()) > options.max_image_bytes)
        return absl::ResourceExhaustedError(absl::StrCat("image ", i + 1, " is ", bytes.size(),
                                                         " bytes, over the limit of ", options.max_image_bytes));
      auto tiles = preprocess::LoadImageTiles(bytes, tiling);
      if (!tiles.ok()) return Annotate(tiles.status(), absl::StrCat("image ", i + 1));
      all.push_back(std::move(*tiles));
    }
  }
  int64_t n = 0;
  for (const auto& t : all) n += t.count;
  out.values = HostTensor(DType::kF32, {n, 3, S, S});
  float* dst = out.values.data<float>();
  for (const auto& t : all) {
    preprocess::NormalizeTiles(t, dst);
    dst += static_cast<size_t>(t.count) * 3 * S * S;
    out.num_patches_list.push_back(t.count);
  }
  return out;
}

absl::StatusOr<std::string> ChatPipeline::BuildQuery(const ChatRequest& request,
                                                     const std::vector<int>& num_patches_list) const {
  return impl_->prompt->BuildQuery(request, num_patches_list);
}

llm::SamplingParams ChatPipeline::Impl::Sampling(const GenerationSettings& g) const {
  llm::SamplingParams p;
  p.do_sample = g.do_sample;
  p.temperature = g.temperature;
  p.top_p = g.top_p;
  p.top_k = g.top_k;
  p.repetition_penalty = g.repetition_penalty;
  p.seed = g.seed;
  return p;
}

absl::StatusOr<at::Tensor> ChatPipeline::Impl::Embeddings(const std::vector<int64_t>& flat_ids, int64_t batch,
                                                          int64_t len, const Pixels& pixels,
                                                          ChatTimings& timings) const {
  at::Tensor ids = at::from_blob(const_cast<int64_t*>(flat_ids.data()), {batch, len}, at::kLong).clone();
  INTERNVL_ASSIGN_OR_RETURN(at::Tensor embeds, lm->Embed(ids));
  if (pixels.values.empty()) return embeds;
  const auto t0 = Clock::now();
  INTERNVL_ASSIGN_OR_RETURN(at::Tensor vit, ExtractFeature(*vision, HostToTensor(pixels.values)));
  timings.vision_ms = Ms(t0, Clock::now());
  INTERNVL_ASSIGN_OR_RETURN(vit, TorchGuard("casting image embeddings", [&] { return vit.to(lm->dtype()); }));
  return llm::ScatterImageEmbeddings(embeds, ids, prompt->img_context_id(), vit);
}

namespace {
const char* FinishName(llm::FinishReason r) {
  switch (r) {
    case llm::FinishReason::kStop: return "stop";
    case llm::FinishReason::kLength: return "length";
    case llm::FinishReason::kCancelled: return "cancelled";
  }
  return "?";
}

}  // namespace

absl::StatusOr<ChatResult> ChatPipeline::Chat(const ChatRequest& request, const TextCallback& on_text) {
  auto& im = *impl_;
  const auto t_start = Clock::now();
  if (request.question.empty()) return absl::InvalidArgumentError("the question is empty");
  INTERNVL_RETURN_IF_ERROR(ValidateGenerationSettings(request.generation));
  ChatResult result;
  INTERNVL_ASSIGN_OR_RETURN(Impl::Pixels pixels, im.Preprocess(request));
  result.timings.preprocess_ms = Ms(t_start, Clock::now());
  result.num_patches_list = pixels.num_patches_list;
  result.frame_indices = pixels.frame_indices;
  result.num_tiles = static_cast<int>(pixels.values.empty() ? 0 : pixels.values.shape[0]);
  INTERNVL_ASSIGN_OR_RETURN(std::string query, BuildQuery(request, pixels.num_patches_list));
  INTERNVL_ASSIGN_OR_RETURN(std::vector<int> ids32, im.prompt->tokenizer().Encode(query));
  std::vector<int64_t> ids(ids32.begin(), ids32.end());
  result.prompt_tokens = static_cast<int>(ids.size());
  at::InferenceMode guard;
  INTERNVL_ASSIGN_OR_RETURN(at::Tensor embeds,
                            im.Embeddings(ids, 1, static_cast<int64_t>(ids.size()), pixels, result.timings));
  tokenizer::StreamingDetokenizer detok(&im.prompt->tokenizer(), /*skip_special_tokens=*/true);
  llm::GenerationOptions gen;
  gen.max_new_tokens = request.generation.max_new_tokens;
  gen.stop_ids = im.prompt->stop_ids();
  gen.sampling = im.Sampling(request.generation);
  gen.penalty_context = {ids};
  if (on_text) {
    gen.on_token = [&](int id) {
      std::string delta = detok.Put(id);
      return delta.empty() ? true : on_text(delta);
    };
  }
  INTERNVL_ASSIGN_OR_RETURN(llm::GenerateResult gr, llm::Generate(*im.lm, embeds, gen));
  if (on_text) {
    std::string tail = detok.Flush();
    if (!tail.empty()) on_text(tail);
  }
  result.token_ids.assign(gr.tokens[0].begin(), gr.tokens[0].end());
  result.finish_reason = FinishName(gr.finish[0]);
  result.response = im.prompt->Response(result.token_ids);
  result.timings.prefill_ms = gr.prefill_seconds * 1e3;
  result.timings.decode_ms = gr.decode_seconds * 1e3;
  result.timings.total_ms = Ms(t_start, Clock::now());
  return result;
}

absl::StatusOr<std::vector<ChatResult>> ChatPipeline::BatchChat(const std::vector<ChatRequest>& requests) {
  auto& im = *impl_;
  if (requests.empty()) return std::vector<ChatResult>{};
  const auto t_start = Clock::now();
  std::vector<std::vector<int64_t>> rows;
  ChatRequest media;  // all images, in question order
  std::vector<std::vector<int>> patches_per_row;
  Impl::Pixels pixels;
  for (const auto& r : requests) {
    if (r.question.empty()) return absl::InvalidArgumentError("a question is empty");
    if (r.video) return absl::InvalidArgumentError("batch chat takes images, not videos");
    if (r.images.size() > 1) return absl::InvalidArgumentError("batch chat takes at most one image per question");
    if (!r.history.empty()) return absl::InvalidArgumentError("batch chat takes no history");
    INTERNVL_RETURN_IF_ERROR(ValidateGenerationSettings(r.generation));
  }
  for (const auto& r : requests) {
    ChatRequest one = r;
    INTERNVL_ASSIGN_OR_RETURN(Impl::Pixels p, im.Preprocess(one));
    INTERNVL_ASSIGN_OR_RETURN(std::string question, im.prompt->Question(r, p.num_patches_list.size(), /*batch=*/true));
    std::string prompt = tokenizer::RenderPrompt(im.prompt->chat_template(), im.prompt->system_message(), {}, question);
    INTERNVL_ASSIGN_OR_RETURN(std::string query,
                              tokenizer::ExpandImageTokens(prompt, p.num_patches_list, im.config.num_image_token()));
    INTERNVL_ASSIGN_OR_RETURN(std::vector<int> ids, im.prompt->tokenizer().Encode(query));
    rows.emplace_back(ids.begin(), ids.end());
    patches_per_row.push_back(p.num_patches_list);
    // Concatenate pixel values in row order (batch_chat's torch.cat).
    if (!p.values.empty()) {
      if (pixels.values.empty()) {  // nothing accumulated yet
        pixels.values = std::move(p.values);
      } else {
        pixels.values.shape[0] += p.values.shape[0];
        pixels.values.bytes.insert(pixels.values.bytes.end(), p.values.bytes.begin(), p.values.bytes.end());
      }
      for (int n : p.num_patches_list) pixels.num_patches_list.push_back(n);
    }
  }
  const double preprocess_ms = Ms(t_start, Clock::now());
  // Left padding (tokenizer.padding_side = 'left').
  size_t len = 0;
  for (const auto& r : rows) len = std::max(len, r.size());
  const int64_t pad = im.prompt->tokenizer().pad_token_id().value_or(im.prompt->tokenizer().eos_token_id().value_or(0));
  const int64_t B = static_cast<int64_t>(rows.size());
  std::vector<int64_t> flat(B * len, pad), mask(B * len, 0);
  for (int64_t b = 0; b < B; ++b) {
    const size_t off = len - rows[b].size();
    for (size_t j = 0; j < rows[b].size(); ++j) {
      flat[b * len + off + j] = rows[b][j];
      mask[b * len + off + j] = 1;
    }
  }
  at::InferenceMode guard;
  ChatTimings timings;
  INTERNVL_ASSIGN_OR_RETURN(at::Tensor embeds, im.Embeddings(flat, B, static_cast<int64_t>(len), pixels, timings));
  at::Tensor attention_mask = at::from_blob(mask.data(), {B, static_cast<int64_t>(len)}, at::kLong).clone();
  llm::GenerationOptions gen;
  gen.max_new_tokens = requests[0].generation.max_new_tokens;
  gen.stop_ids = im.prompt->stop_ids();
  gen.sampling = im.Sampling(requests[0].generation);
  gen.penalty_context = rows;
  INTERNVL_ASSIGN_OR_RETURN(llm::GenerateResult gr, llm::Generate(*im.lm, embeds, gen, attention_mask));
  std::vector<ChatResult> out(B);
  for (int64_t b = 0; b < B; ++b) {
    ChatResult& r = out[b];
    r.token_ids.assign(gr.tokens[b].begin(), gr.tokens[b].end());
    r.finish_reason = FinishName(gr.finish[b]);
    r.response = im.prompt->Response(r.token_ids);
    r.prompt_tokens = static_cast<int>(rows[b].size());
    r.num_patches_list = patches_per_row[b];
    r.timings = timings;
    r.timings.preprocess_ms = preprocess_ms;
    r.timings.prefill_ms = gr.prefill_seconds * 1e3;
    r.timings.decode_ms = gr.decode_seconds * 1e3;
    r.timings.total_ms = Ms(t_start, Clock::now());
  }
  return out;
}

}  // namespace internvl
