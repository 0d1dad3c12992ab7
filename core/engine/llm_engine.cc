#include "core/engine/llm_engine.h"

#include <ATen/ATen.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <fstream>
#include <mutex>
#include <numeric>
#include <thread>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "core/engine/block_manager.h"
#include "core/engine/llm_engine_torch.h"
#include "core/engine/scheduler.h"
#include "core/llm/causal_lm.h"
#include "core/llm/sampler.h"
#include "core/nn/device.h"
#include "core/nn/torch_util.h"
#include "core/safetensors.h"
#include "core/status.h"
#include "core/vision/vision_model_torch.h"

namespace internvl {

using Clock = std::chrono::steady_clock;

namespace {

double Ms(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double, std::milli>(b - a).count(); }

// The memory this process may use: physical memory, or the container's
// cgroup limit when lower (a pod's limit, not the node's RAM).
int64_t MemoryLimitBytes() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  int64_t limit = pages > 0 && page > 0 ? static_cast<int64_t>(pages) * page : int64_t{8} << 30;
  for (const char* path : {"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"}) {
    std::ifstream f(path);
    int64_t v = 0;
    if (f >> v && v > 0) limit = std::min(limit, v);  // "max" (no limit) fails to parse
  }
  return limit;
}

// One generation's state beside the scheduler's Sequence: what the executor
// needs (image rows, rotary state, sampler) and what the caller waits on.
class Generation : public GenerationHandle {
 public:
  void Cancel() override { cancel_requested.store(true); }
  absl::StatusOr<EngineResult> Wait() override {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return result.has_value(); });
    return *result;
  }
  void Complete(absl::StatusOr<EngineResult> r) {
    {
      std::lock_guard<std::mutex> lock(mu);
      result = std::move(r);
    }
    cv.notify_all();
  }

  int64_t id = 0;
  EngineRequest request;
  EngineDoneCallback on_done;
  at::Tensor image_rows;              // [rows, H] in the compute dtype
  std::vector<int64_t> image_row_of;  // per prompt position: its image row, or -1
  llm::RotaryEmbedding rope;
  std::optional<llm::Sampler> sampler;
  std::vector<std::vector<int64_t>> penalty_context;  // {prompt + generated}, when a penalty applies
  std::vector<std::vector<int64_t>> output_context;   // {generated}, when an additive penalty applies
  std::vector<int> generated;
  ScmOutcome scm;
  std::atomic<bool> cancel_requested{false};
  bool cancelled_by_callback = false;
  Clock::time_point submitted, scheduled, first_token, last_token;
  bool was_scheduled = false;

  explicit Generation(llm::RotaryEmbedding r) : rope(std::move(r)) {}

 private:
  std::mutex mu;
  std::condition_variable cv;
  std::optional<absl::StatusOr<EngineResult>> result;
};

// MiniMonkey's Scale Compression Mechanism (MINIMONKEY.md section 4) on a
// validated request: scores the block [s, s + H) by layer-1 attention over
// the whole prompt's embeddings, keeps its top H/2 in order, drops s + H
// (the official off-by-one) and rewrites the prompt ids and image rows.
absl::Status ScaleCompress(const llm::CausalLM& lm, EngineRequest& request, ScmOutcome* out) {
  const std::vector<int64_t>& ids = request.prompt_ids;
  const int64_t len = static_cast<int64_t>(ids.size()), high = request.scm_high_tokens;
  const auto first = std::find(ids.begin(), ids.end(), request.img_context_id);
  if (request.img_context_id < 0 || first == ids.end() || request.image_embeddings.empty())
    return absl::InvalidArgumentError("SCM (scale compression) needs an image in the prompt");
  const int64_t s = first - ids.begin();
  if (s + high >= len)
    return absl::InvalidArgumentError(absl::StrCat("SCM's block of ", high, " tokens from the first image token (", s,
                                                   ") reaches the end of the ", len, "-token prompt"));
  if (lm.config().num_hidden_layers < 2)
    return absl::InvalidArgumentError("SCM scores layer 1's attention: the model has a single layer");
  const HostTensor& images = request.image_embeddings;
  const int64_t hidden = lm.config().hidden_size, rows = images.numel() / hidden;
  at::Tensor scores;
  {
    c10::InferenceMode guard;
    at::Tensor id_tensor = at::from_blob(const_cast<int64_t*>(ids.data()), {1, len}, at::kLong);
    INTERNVL_ASSIGN_OR_RETURN(at::Tensor text, lm.Embed(id_tensor));
    INTERNVL_ASSIGN_OR_RETURN(at::Tensor vit, TorchGuard("SCM image rows", [&] {
                                return HostToTensor(images).reshape({1, rows, hidden});
                              }));
    INTERNVL_ASSIGN_OR_RETURN(at::Tensor embeds,
                              llm::ScatterImageEmbeddings(text, id_tensor, request.img_context_id, vit));
    INTERNVL_ASSIGN_OR_RETURN(scores, lm.AttentionColumnMeans(embeds, /*layer=*/1, s, s + high, s + high));
  }
  // torch.topk(scores, H/2), then the indices sorted ascending; equal scores
  // keep the lower offset (torch leaves that order unspecified).
  const float* sc = scores.data_ptr<float>();
  std::vector<int> order(high);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return sc[a] > sc[b]; });
  std::vector<int> kept(order.begin(), order.begin() + high / 2);
  std::sort(kept.begin(), kept.end());
  std::vector<bool> keep(len, true);
  for (int64_t p = s; p <= s + high; ++p) keep[p] = false;
  for (int k : kept) keep[s + k] = true;
  // The prompt and its image rows, gathered at the kept positions.
  const size_t row_bytes = static_cast<size_t>(hidden) * DTypeSize(images.dtype);
  std::vector<int64_t> new_ids;
  std::vector<int64_t> new_rows;
  int64_t row = 0;
  for (int64_t p = 0; p < len; ++p) {
    const bool image = ids[p] == request.img_context_id;
    if (keep[p]) {
      new_ids.push_back(ids[p]);
      if (image) new_rows.push_back(row);
    }
    if (image) ++row;
  }
  HostTensor gathered(images.dtype, {static_cast<int64_t>(new_rows.size()), hidden});
  for (size_t i = 0; i < new_rows.size(); ++i)
    std::memcpy(gathered.bytes.data() + i * row_bytes, images.bytes.data() + new_rows[i] * row_bytes, row_bytes);
  out->applied = true;
  out->first_image_token = s;
  out->high_tokens = high;
  out->length_before = len;
  out->length_after = static_cast<int64_t>(new_ids.size());
  out->kept_offsets = std::move(kept);
  out->scores.assign(sc, sc + high);
  request.prompt_ids = std::move(new_ids);
  request.image_embeddings = std::move(gathered);
  return absl::OkStatus();
}

}  // namespace

absl::Status LlmEngineOptions::Validate() const {
  INTERNVL_RETURN_IF_ERROR(llm::ParseQuantization(quantize).status());
  if (head_candidates < 0 || head_candidates > (int64_t{1} << 20)) {
    return absl::InvalidArgumentError(absl::StrCat("head_candidates must be in [0, 1048576], got ", head_candidates));
  }
  if (kv_cache_dtype != "auto" && kv_cache_dtype != "bf16" && kv_cache_dtype != "fp32") {
    return absl::InvalidArgumentError(
        absl::StrCat("kv_cache_dtype must be auto, bf16 or fp32, got \"", kv_cache_dtype, "\""));
  }
  INTERNVL_RETURN_IF_ERROR(ParseDevice(device).status());
  if (kv_cache_bytes < 0) return absl::InvalidArgumentError("kv_cache_bytes must be >= 0");
  if (kv_cache_bytes == 0 && !(kv_cache_fraction > 0 && kv_cache_fraction <= 0.9))
    return absl::InvalidArgumentError(absl::StrCat("kv_cache_fraction must be in (0, 0.9], got ", kv_cache_fraction));
  engine::SchedulerConfig c;
  c.block_size = block_size;
  c.num_blocks = 1;
  c.max_num_seqs = max_num_seqs;
  c.max_batched_tokens = max_batched_tokens;
  c.max_waiting = max_waiting;
  return c.Validate();
}

absl::Status ValidateGenerationSettings(const GenerationSettings& g) {
  if (g.max_new_tokens < 1) return absl::InvalidArgumentError("max_new_tokens must be at least 1");
  if (!(g.temperature > 0))
    return absl::InvalidArgumentError(absl::StrCat("temperature must be > 0, got ", g.temperature));
  if (!(g.top_p > 0 && g.top_p <= 1))
    return absl::InvalidArgumentError(absl::StrCat("top_p must be in (0, 1], got ", g.top_p));
  if (g.top_k < 0) return absl::InvalidArgumentError(absl::StrCat("top_k must be >= 0, got ", g.top_k));
  if (!(g.repetition_penalty > 0))
    return absl::InvalidArgumentError(absl::StrCat("repetition_penalty must be > 0, got ", g.repetition_penalty));
  if (!(g.frequency_penalty >= -2 && g.frequency_penalty <= 2))
    return absl::InvalidArgumentError(absl::StrCat("frequency_penalty must be in [-2, 2], got ", g.frequency_penalty));
  if (!(g.presence_penalty >= -2 && g.presence_penalty <= 2))
    return absl::InvalidArgumentError(absl::StrCat("presence_penalty must be in [-2, 2], got ", g.presence_penalty));
  return absl::OkStatus();
}

struct LlmEngine::Impl {
  LlmEngineOptions options;
  std::unique_ptr<llm::CausalLM> lm;
  std::unique_ptr<llm::PagedKVPool> pool;

  // Guards the scheduler, the generations map and `stopping`; never held
  // across a forward pass.
  mutable std::mutex mu;
  std::condition_variable work;
  std::unique_ptr<engine::Scheduler> scheduler;
  absl::flat_hash_map<int64_t, std::shared_ptr<Generation>> live;
  int64_t next_id = 1;
  bool stopping = false;
  int64_t steps = 0;
  std::atomic<EngineObserver*> observer{nullptr};
  std::thread thread;

  void Loop();
  // One scheduled step (without the lock). Returns the report's token lists.
  // A draw that fails (NaN logits) fails only its sequence: its status goes
  // to (*failed)[i], the step goes on.
  absl::Status RunStep(const engine::StepPlan& plan, std::vector<int32_t>* sampled, std::vector<absl::Status>* failed);
  void Finish(const std::shared_ptr<Generation>& g, absl::StatusOr<EngineResult> r);
  EngineResult ResultOf(const Generation& g, const engine::Sequence* seq) const;
};

LlmEngine::LlmEngine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

LlmEngine::~LlmEngine() {
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->stopping = true;
  }
  impl_->work.notify_all();
  if (impl_->thread.joinable()) impl_->thread.join();
}

absl::StatusOr<std::unique_ptr<LlmEngine>> LlmEngine::Load(const std::string& model_dir, const InternVLConfig& config,
                                                           const LlmEngineOptions& options) {
  INTERNVL_RETURN_IF_ERROR(options.Validate());
  SetTorchThreads(options.threads);
  INTERNVL_ASSIGN_OR_RETURN(at::ScalarType requested, ParseComputeDType(options.dtype));
  INTERNVL_ASSIGN_OR_RETURN(c10::Device device, ParseDevice(options.device));
  INTERNVL_RETURN_IF_ERROR(PrepareDevice(device));
  INTERNVL_ASSIGN_OR_RETURN(auto store, TensorStore::OpenDir(model_dir));
  llm::Precision precision = llm::Precision::ForRequested(requested, device);
  INTERNVL_ASSIGN_OR_RETURN(precision.quantize, llm::ParseQuantization(options.quantize));
  precision.head_candidates = options.head_candidates;
  INTERNVL_ASSIGN_OR_RETURN(auto lm, llm::CausalLM::Load(config.llm, *store, precision));
  return CreateLlmEngine(std::move(lm), options);
}

absl::StatusOr<std::unique_ptr<LlmEngine>> CreateLlmEngine(std::unique_ptr<llm::CausalLM> lm,
                                                           const LlmEngineOptions& options) {
  INTERNVL_RETURN_IF_ERROR(options.Validate());
  SetTorchThreads(options.threads);
  auto impl = std::make_unique<LlmEngine::Impl>();
  impl->options = options;
  int64_t budget = options.kv_cache_bytes;
  if (budget == 0 && lm->device().is_cpu()) {
    budget = static_cast<int64_t>(options.kv_cache_fraction * MemoryLimitBytes());
  } else if (budget == 0) {
    INTERNVL_ASSIGN_OR_RETURN(DeviceMemory memory, QueryDeviceMemory(lm->device()));
    budget = std::min(static_cast<int64_t>(options.kv_cache_fraction * memory.total_bytes),
                      static_cast<int64_t>(0.9 * memory.free_bytes));
  }
  const at::ScalarType kv_dtype = options.kv_cache_dtype == "bf16"   ? at::kBFloat16
                                  : options.kv_cache_dtype == "fp32" ? at::kFloat
                                                                     : lm->DefaultKvDtype();
  if (!lm->ServesKvDtype(kv_dtype)) {
    return absl::InvalidArgumentError(absl::StrCat("kv_cache_dtype ", options.kv_cache_dtype,
                                                   ": this model computes in ", c10::toString(lm->dtype()),
                                                   " and keeps its cache in that dtype (or bf16 under fp32 compute)"));
  }
  const int64_t per_block = llm::PagedKVPool::BytesPerBlock(lm->config(), options.block_size, kv_dtype);
  engine::SchedulerConfig sc;
  sc.block_size = options.block_size;
  sc.num_blocks = budget / per_block;
  sc.max_num_seqs = options.max_num_seqs;
  sc.max_batched_tokens = options.max_batched_tokens;
  sc.max_waiting = options.max_waiting;
  sc.prefix_caching = options.prefix_caching;
  if (sc.num_blocks < 1) {
    return absl::InvalidArgumentError(absl::StrCat("the KV cache budget of ", budget,
                                                   " bytes holds no block (one block of ", options.block_size,
                                                   " positions takes ", per_block, " bytes): raise --kv-cache-bytes"));
  }
  INTERNVL_RETURN_IF_ERROR(sc.Validate());
  INTERNVL_ASSIGN_OR_RETURN(impl->pool, lm->NewPagedPool(sc.num_blocks, options.block_size, kv_dtype));
  impl->lm = std::move(lm);
  impl->scheduler = std::make_unique<engine::Scheduler>(sc);
  LlmEngine::Impl* raw = impl.get();
  impl->thread = std::thread([raw] { raw->Loop(); });
  return std::unique_ptr<LlmEngine>(new LlmEngine(std::move(impl)));
}

int64_t LlmEngine::hidden_size() const { return impl_->lm->config().hidden_size; }
int64_t LlmEngine::vocab_size() const { return impl_->lm->config().vocab_size; }
std::string LlmEngine::dtype_name() const { return impl_->lm->dtype() == at::kBFloat16 ? "bf16" : "fp32"; }
std::string LlmEngine::kv_cache_dtype_name() const { return impl_->pool->dtype() == at::kBFloat16 ? "bf16" : "fp32"; }
std::string LlmEngine::device_name() const { return impl_->lm->device().str(); }
const LlmEngineOptions& LlmEngine::options() const { return impl_->options; }
void LlmEngine::SetObserver(EngineObserver* observer) { impl_->observer.store(observer); }

EngineStats LlmEngine::stats() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  const engine::SchedulerStats s = impl_->scheduler->stats();
  EngineStats out;
  out.running = s.running;
  out.waiting = s.waiting;
  out.kv_blocks_used = s.blocks.used;
  out.kv_blocks_total = s.blocks.num_blocks;
  out.kv_capacity_tokens = s.blocks.num_blocks * impl_->options.block_size;
  out.prefix_query_tokens = s.prefix_query_tokens;
  out.prefix_hit_tokens = s.prefix_hit_tokens;
  out.preemptions = s.preemptions;
  out.steps = impl_->steps;
  return out;
}

absl::StatusOr<std::shared_ptr<GenerationHandle>> LlmEngine::Submit(EngineRequest request, EngineDoneCallback on_done) {
  Impl& im = *impl_;
  INTERNVL_RETURN_IF_ERROR(ValidateGenerationSettings(request.settings));
  if (request.prompt_ids.empty()) return absl::InvalidArgumentError("the prompt is empty");
  const int64_t vocab = vocab_size(), hidden = hidden_size();
  auto g = std::make_shared<Generation>(im.lm->NewRotary());
  g->submitted = Clock::now();
  int64_t image_tokens = 0;
  g->image_row_of.assign(request.prompt_ids.size(), -1);
  for (size_t i = 0; i < request.prompt_ids.size(); ++i) {
    const int64_t id = request.prompt_ids[i];
    if (id < 0 || id >= vocab)
      return absl::InvalidArgumentError(absl::StrCat("token id ", id, " is outside the vocabulary [0, ", vocab, ")"));
    if (id == request.img_context_id) g->image_row_of[i] = image_tokens++;
  }
  int64_t rows = 0;
  const HostTensor& images = request.image_embeddings;
  if (!images.empty()) {
    if (images.dtype != DType::kF32 && images.dtype != DType::kBF16 && images.dtype != DType::kF16)
      return absl::InvalidArgumentError("image embeddings must be F32, BF16 or F16");
    if (images.shape.back() != hidden)
      return absl::InvalidArgumentError(
          absl::StrCat("image embeddings have hidden size ", images.shape.back(), ", the model has ", hidden));
    rows = images.numel() / hidden;
  }
  if (rows != image_tokens)
    return absl::InvalidArgumentError(
        absl::StrCat(rows, " image embedding rows for ", image_tokens, " <IMG_CONTEXT> tokens in the prompt"));
  ScmOutcome scm;
  if (request.scm_high_tokens > 0) {
    INTERNVL_RETURN_IF_ERROR(ScaleCompress(*im.lm, request, &scm));
    g->image_row_of.assign(request.prompt_ids.size(), -1);
    rows = 0;
    for (size_t i = 0; i < request.prompt_ids.size(); ++i)
      if (request.prompt_ids[i] == request.img_context_id) g->image_row_of[i] = rows++;
  }
  g->scm = std::move(scm);

  engine::SequenceSpec spec;
  spec.prompt.assign(request.prompt_ids.begin(), request.prompt_ids.end());
  spec.max_new_tokens = request.settings.max_new_tokens;
  spec.stop_ids.assign(request.stop_ids.begin(), request.stop_ids.end());
  if (rows > 0) {
    // The rows in the compute dtype, and per KV block a digest of the rows it
    // holds (what its K/V depend on besides the token ids).
    INTERNVL_ASSIGN_OR_RETURN(at::Tensor host_rows, TorchGuard("casting image embeddings", [&] {
                                return HostToTensor(images).reshape({rows, hidden}).to(im.lm->dtype()).contiguous();
                              }));
    INTERNVL_ASSIGN_OR_RETURN(g->image_rows, TorchGuard("copying image embeddings to the device",
                                                        [&] { return host_rows.to(im.lm->device()); }));
    const int bs = im.options.block_size;
    const int64_t row_bytes = hidden * static_cast<int64_t>(host_rows.element_size());
    const auto* base = static_cast<const uint8_t*>(host_rows.data_ptr());
    const int64_t blocks = (static_cast<int64_t>(spec.prompt.size()) + bs - 1) / bs;
    spec.block_extra.resize(blocks);
    for (int64_t b = 0; b < blocks; ++b) {
      int64_t first = -1, count = 0;
      for (int64_t p = b * bs; p < std::min<int64_t>((b + 1) * bs, spec.prompt.size()); ++p) {
        if (g->image_row_of[p] < 0) continue;
        if (first < 0) first = g->image_row_of[p];
        ++count;
      }
      if (count == 0) continue;
      // Rows of one block are consecutive (prompt order).
      const engine::BlockHash h = engine::HashBlock(
          nullptr, {}, std::string(reinterpret_cast<const char*>(base + first * row_bytes), count * row_bytes));
      spec.block_extra[b].assign(reinterpret_cast<const char*>(h.data()), h.size());
    }
  }
  INTERNVL_ASSIGN_OR_RETURN(llm::Sampler sampler, llm::Sampler::Create(llm::SamplingParams{
                                                      .do_sample = request.settings.do_sample,
                                                      .temperature = request.settings.temperature,
                                                      .top_k = request.settings.top_k,
                                                      .top_p = request.settings.top_p,
                                                      .repetition_penalty = request.settings.repetition_penalty,
                                                      .frequency_penalty = request.settings.frequency_penalty,
                                                      .presence_penalty = request.settings.presence_penalty,
                                                      .seed = request.settings.seed}));
  g->sampler.emplace(std::move(sampler));
  g->penalty_context.resize(1);
  if (request.settings.repetition_penalty != 1.0) g->penalty_context[0] = request.prompt_ids;
  g->output_context.resize(1);
  g->request = std::move(request);
  g->on_done = std::move(on_done);
  {
    std::lock_guard<std::mutex> lock(im.mu);
    if (im.stopping) return absl::UnavailableError("the engine is shutting down");
    g->id = im.next_id++;
    INTERNVL_RETURN_IF_ERROR(im.scheduler->Add(g->id, std::move(spec)));
    im.live.emplace(g->id, g);
  }
  im.work.notify_one();
  return std::shared_ptr<GenerationHandle>(g);
}

absl::StatusOr<EngineResult> LlmEngine::Generate(EngineRequest request) {
  INTERNVL_ASSIGN_OR_RETURN(auto handle, Submit(std::move(request)));
  return handle->Wait();
}

EngineResult LlmEngine::Impl::ResultOf(const Generation& g, const engine::Sequence* seq) const {
  EngineResult r;
  r.token_ids = g.generated;
  r.finish_reason = seq != nullptr && seq->finish_reason() ? *seq->finish_reason() : FinishReason::kCancelled;
  r.prompt_tokens = static_cast<int>(g.request.prompt_ids.size());
  r.scm = g.scm;
  if (seq != nullptr) {
    r.cached_prompt_tokens = static_cast<int>(seq->num_cached_tokens());
    r.preemptions = seq->num_preemptions();
  }
  if (g.was_scheduled) r.queue_ms = Ms(g.submitted, g.scheduled);
  if (!g.generated.empty()) {
    r.prefill_ms = Ms(g.scheduled, g.first_token);
    r.decode_ms = Ms(g.first_token, g.last_token);
    r.time_to_first_token_ms = Ms(g.submitted, g.first_token);
  }
  return r;
}

void LlmEngine::Impl::Finish(const std::shared_ptr<Generation>& g, absl::StatusOr<EngineResult> r) {
  if (g->on_done) g->on_done(r);
  g->Complete(std::move(r));
}

absl::Status LlmEngine::Impl::RunStep(const engine::StepPlan& plan, std::vector<int32_t>* sampled,
                                      std::vector<absl::Status>* failed) {
  std::vector<int64_t> ids;
  std::vector<llm::PagedSeq> seqs;
  std::vector<const llm::RotaryEmbedding*> ropes;
  std::vector<Generation*> gens;
  // (batch row, image row) for prompt positions that hold image embeddings,
  // per generation.
  std::vector<std::pair<Generation*, std::pair<std::vector<int64_t>, std::vector<int64_t>>>> image_rows;
  {
    std::lock_guard<std::mutex> lock(mu);
    int64_t row = 0;
    for (const engine::ScheduledSeq& s : plan.seqs) {
      Generation* g = live.at(s.seq->id()).get();
      const std::vector<int32_t>& tokens = s.seq->tokens();
      std::vector<int64_t> batch_rows, img_rows;
      for (int64_t p = s.start; p < s.start + s.num_new; ++p) {
        ids.push_back(tokens[p]);
        if (p < static_cast<int64_t>(g->image_row_of.size()) && g->image_row_of[p] >= 0) {
          batch_rows.push_back(row + (p - s.start));
          img_rows.push_back(g->image_row_of[p]);
        }
      }
      if (!batch_rows.empty()) image_rows.push_back({g, {std::move(batch_rows), std::move(img_rows)}});
      llm::PagedSeq ps;
      ps.start = s.start;
      ps.num_new = s.num_new;
      ps.blocks = s.seq->blocks();
      ps.logits = s.sample;
      seqs.push_back(std::move(ps));
      // Every pass attends over the whole known length, as the reference's
      // one prefill forward does (dynamic NTK sees the full prompt length).
      g->rope.Observe(static_cast<int64_t>(tokens.size()));
      ropes.push_back(&g->rope);
      gens.push_back(g);
      row += s.num_new;
    }
  }
  const int64_t n = static_cast<int64_t>(ids.size());
  INTERNVL_ASSIGN_OR_RETURN(at::Tensor embeds,
                            lm->Embed(at::from_blob(ids.data(), {1, n}, at::TensorOptions().dtype(at::kLong))));
  embeds = embeds[0];
  if (!image_rows.empty()) {
    INTERNVL_RETURN_IF_ERROR(TorchGuard("placing image embeddings", [&] {
      for (auto& [g, idx] : image_rows) {
        const auto long_opts = at::TensorOptions().dtype(at::kLong);
        at::Tensor dst = at::tensor(idx.first, long_opts).to(embeds.device());
        at::Tensor src = at::tensor(idx.second, long_opts).to(embeds.device());
        embeds.index_copy_(0, dst, g->image_rows.index_select(0, src));
      }
    }));
  }
  INTERNVL_ASSIGN_OR_RETURN(at::Tensor logits, lm->ForwardPaged(embeds, seqs, ropes, *pool));
  // The samplers run on the host: one copy of [S, V] per step.
  if (!logits.device().is_cpu()) {
    INTERNVL_ASSIGN_OR_RETURN(logits, TorchGuard("copying logits", [&] { return logits.to(at::kCPU); }));
  }
  sampled->assign(plan.seqs.size(), -1);
  failed->assign(plan.seqs.size(), absl::OkStatus());
  int64_t k = 0;
  for (size_t i = 0; i < plan.seqs.size(); ++i) {
    if (!plan.seqs[i].sample) continue;
    Generation* g = gens[i];
    absl::StatusOr<std::vector<int64_t>> next =
        g->sampler->Next(logits.narrow(0, k++, 1), g->penalty_context, g->output_context);
    if (next.ok()) {
      (*sampled)[i] = static_cast<int32_t>((*next)[0]);
    } else {
      (*failed)[i] = next.status();
    }
  }
  return absl::OkStatus();
}

void LlmEngine::Impl::Loop() {
  at::InferenceMode inference;
  while (true) {
    engine::StepPlan plan;
    std::vector<std::pair<std::shared_ptr<Generation>, absl::StatusOr<EngineResult>>> ended;
    EngineStepReport report;
    const engine::SchedulerStats before = [&] {
      std::unique_lock<std::mutex> lock(mu);
      work.wait(lock, [&] { return stopping || !scheduler->idle(); });
      return scheduler->stats();
    }();
    {
      std::lock_guard<std::mutex> lock(mu);
      if (stopping) {
        for (auto& [id, g] : live) ended.push_back({g, absl::UnavailableError("the engine is shutting down")});
        live.clear();
      } else {
        // Leavers first: cancelled, deadline passed.
        const absl::Time now = absl::Now();
        for (auto& [id, g] : live) {
          const bool cancelled = g->cancel_requested.load() || g->cancelled_by_callback;
          if (cancelled) {
            scheduler->Finish(id, FinishReason::kCancelled);
            ended.push_back({g, ResultOf(*g, scheduler->Find(id))});
          } else if (now > g->request.deadline) {
            scheduler->Finish(id, FinishReason::kCancelled);
            ended.push_back({g, absl::DeadlineExceededError(absl::StrCat("the deadline passed after ",
                                                                         g->generated.size(), " generated tokens"))});
          }
        }
        for (auto& e : ended) {
          scheduler->Remove(e.first->id);
          live.erase(e.first->id);
        }
        plan = scheduler->Schedule();
        const Clock::time_point t = Clock::now();
        for (const engine::ScheduledSeq& s : plan.seqs) {
          Generation* g = live.at(s.seq->id()).get();
          if (!g->was_scheduled) {
            g->was_scheduled = true;
            g->scheduled = t;
          }
        }
      }
    }
    for (auto& [g, r] : ended) Finish(g, std::move(r));
    if (plan.empty()) {
      std::lock_guard<std::mutex> lock(mu);
      if (stopping && live.empty()) return;
      continue;
    }
    const Clock::time_point t0 = Clock::now();
    std::vector<int32_t> sampled;
    std::vector<absl::Status> failed;
    const absl::Status step = RunStep(plan, &sampled, &failed);
    const Clock::time_point t1 = Clock::now();
    std::vector<std::pair<std::shared_ptr<Generation>, absl::StatusOr<EngineResult>>> done;
    std::vector<std::pair<std::shared_ptr<Generation>, int>> emit;
    {
      std::lock_guard<std::mutex> lock(mu);
      ++steps;
      if (!step.ok()) {
        // A failed step fails the sequences it carried, nothing else.
        for (const engine::ScheduledSeq& s : plan.seqs) {
          auto g = live.at(s.seq->id());
          scheduler->Finish(g->id, FinishReason::kCancelled);
          scheduler->Remove(g->id);
          live.erase(g->id);
          done.push_back({g, Annotate(step, "generation step")});
        }
      } else {
        // Sequences whose draw failed end now, before the commit (which
        // skips finished ones); the rest of the batch goes on.
        std::vector<int64_t> failed_ids;
        for (size_t i = 0; i < plan.seqs.size(); ++i) {
          if (failed[i].ok()) continue;
          auto g = live.at(plan.seqs[i].seq->id());
          scheduler->Finish(g->id, FinishReason::kCancelled);
          failed_ids.push_back(g->id);
          done.push_back({g, Annotate(failed[i], "generation step")});
        }
        for (size_t i = 0; i < plan.seqs.size(); ++i) {
          if (!plan.seqs[i].sample || !failed[i].ok()) continue;
          auto g = live.at(plan.seqs[i].seq->id());
          if (g->generated.empty()) {
            g->first_token = t1;
            report.time_to_first_token_s.push_back(std::chrono::duration<double>(t1 - g->submitted).count());
          } else {
            report.inter_token_s.push_back(std::chrono::duration<double>(t1 - g->last_token).count());
          }
          g->last_token = t1;
          g->generated.push_back(sampled[i]);
          if (g->request.settings.repetition_penalty != 1.0) g->penalty_context[0].push_back(sampled[i]);
          if (g->sampler->params().AdditivePenalties()) g->output_context[0].push_back(sampled[i]);
          emit.push_back({g, sampled[i]});
        }
        for (int64_t id : scheduler->Commit(plan, sampled)) {
          auto g = live.at(id);
          done.push_back({g, ResultOf(*g, scheduler->Find(id))});
          scheduler->Remove(id);
          live.erase(id);
        }
        for (int64_t id : failed_ids) {
          scheduler->Remove(id);
          live.erase(id);
        }
      }
      const engine::SchedulerStats after = scheduler->stats();
      report.running = after.running;
      report.waiting = after.waiting;
      report.batch_sequences = static_cast<int64_t>(plan.seqs.size());
      report.batch_tokens = plan.num_tokens;
      report.kv_blocks_used = after.blocks.used;
      report.kv_blocks_free = after.blocks.free + after.blocks.cached_free;
      report.kv_blocks_total = after.blocks.num_blocks;
      report.preemptions = after.preemptions - before.preemptions;
      report.prefix_query_tokens = after.prefix_query_tokens - before.prefix_query_tokens;
      report.prefix_hit_tokens = after.prefix_hit_tokens - before.prefix_hit_tokens;
      report.step_seconds = std::chrono::duration<double>(t1 - t0).count();
    }
    // Callbacks outside the lock (they may Submit or Cancel).
    for (auto& [g, id] : emit) {
      if (g->request.on_token && !g->request.on_token(id)) g->cancelled_by_callback = true;
    }
    for (auto& [g, r] : done) Finish(g, std::move(r));
    if (EngineObserver* o = observer.load()) o->OnStep(report);
  }
}

}  // namespace internvl
