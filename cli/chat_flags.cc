#include "cli/chat_flags.h"

#include "absl/strings/str_cat.h"
#include "core/files.h"
#include "core/status.h"
#include "core/tokenizer/stop_strings.h"
#include "nlohmann/json.hpp"

namespace internvl::cli {

std::vector<FlagSpec> ChatRequestFlags() {
  return {
      {"text", "the question", true, false, ""},
      {"image", "an image file; repeat for several images", true, true, ""},
      {"max-num", "maximum tiles per image (thumbnail not counted)", true, false, "12"},
      {"video", "a video file (instead of images)", true, false, ""},
      {"num-segments", "video frames to sample", true, false, "8"},
      {"history", "JSON file: a list of [question, answer] pairs (chat()'s history)", true, false, ""},
      {"system", "replace the model's system message (model.system_message)", true, false, ""},
      {"max-new-tokens", "maximum tokens to generate", true, false, "1024"},
      {"temperature", "sampling temperature; > 0 enables sampling (default greedy)", true, false, "0"},
      {"top-p", "nucleus sampling mass", true, false, "1.0"},
      {"top-k", "top-k sampling (0 disables)", true, false, "50"},
      {"repetition-penalty", "HF repetition penalty (1 disables)", true, false, "1.0"},
      {"frequency-penalty", "OpenAI frequency penalty over the generated tokens, in [-2, 2] (0 disables)", true, false,
       "0"},
      {"presence-penalty", "OpenAI presence penalty over the generated tokens, in [-2, 2] (0 disables)", true, false,
       "0"},
      {"seed", "sampling seed", true, false, "0"},
      {"stop", "a stop string (repeat for several): generation ends once the text contains it; it is not printed", true,
       true, ""},
      {"scm", "MiniMonkey: compress the image's visual tokens with SCM (layer-1 attention keeps half a block)", false,
       false, ""},
      {"minimonkey-order", "MiniMonkey tile order: demo (B grid, A grid, thumbnail) or eval (A, B, thumbnail)", true,
       false, "demo"},
      {"minimonkey-ranges", "MiniMonkey tile ranges A_MIN,A_MAX,B_MIN,B_MAX", true, false, "4,12,3,7"},
      {"minimonkey-rule", "MiniMonkey scale-B filter: official or paddlemix", true, false, "official"},
      {"json", "print the result as one JSON line at the end", false, false, ""},
  };
}

absl::StatusOr<std::optional<preprocess::MiniMonkeyOptions>> MiniMonkeyTilingFromArgs(const Args& args) {
  if (!args.Get("minimonkey-order") && !args.Get("minimonkey-ranges") && !args.Get("minimonkey-rule"))
    return std::optional<preprocess::MiniMonkeyOptions>();
  preprocess::MiniMonkeyOptions o;
  if (auto v = args.Get("minimonkey-order")) {
    INTERNVL_ASSIGN_OR_RETURN(o.order, preprocess::ParseMiniMonkeyOrder(*v));
  }
  if (auto v = args.Get("minimonkey-rule")) {
    INTERNVL_ASSIGN_OR_RETURN(o.rule, preprocess::ParseScaleBRule(*v));
  }
  if (auto v = args.Get("minimonkey-ranges")) {
    INTERNVL_RETURN_IF_ERROR(preprocess::ParseMiniMonkeyRanges(*v, &o));
  }
  return std::optional<preprocess::MiniMonkeyOptions>(o);
}

absl::Status MiniMonkeyFromArgs(const Args& args, ChatRequest* r) {
  r->scm = args.Has("scm");
  INTERNVL_ASSIGN_OR_RETURN(r->minimonkey, MiniMonkeyTilingFromArgs(args));
  return absl::OkStatus();
}

absl::StatusOr<ChatRequest> ChatRequestFromArgs(const Args& args) {
  ChatRequest r;
  INTERNVL_ASSIGN_OR_RETURN(r.question, args.Require("text"));
  for (const std::string& path : args.GetAll("image")) {
    INTERNVL_ASSIGN_OR_RETURN(std::string bytes, ReadFile(path));
    r.images.push_back(std::move(bytes));
  }
  if (auto v = args.Get("video")) {
    if (!r.images.empty()) return absl::InvalidArgumentError("--video and --image are exclusive");
    INTERNVL_ASSIGN_OR_RETURN(std::string bytes, ReadFile(*v));
    r.video = std::move(bytes);
  }
  INTERNVL_ASSIGN_OR_RETURN(r.max_num, args.GetInt("max-num", 12));
  INTERNVL_ASSIGN_OR_RETURN(r.num_segments, args.GetInt("num-segments", 8));
  if (auto s = args.Get("system")) r.system_message = *s;
  if (auto h = args.Get("history")) {
    INTERNVL_ASSIGN_OR_RETURN(std::string text, ReadFile(*h, 64 << 20));
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
      return absl::InvalidArgumentError(absl::StrCat(*h, " is not valid JSON: ", e.what()));
    }
    if (!j.is_array())
      return absl::InvalidArgumentError(absl::StrCat(*h, ": history must be a list of [question, answer]"));
    for (const auto& turn : j) {
      if (!turn.is_array() || turn.size() != 2 || !turn[0].is_string() || !turn[1].is_string())
        return absl::InvalidArgumentError(absl::StrCat(*h, ": each history turn must be [question, answer] strings"));
      r.history.emplace_back(turn[0].get<std::string>(), turn[1].get<std::string>());
    }
    r.history_given = true;
  }
  auto& g = r.generation;
  INTERNVL_ASSIGN_OR_RETURN(g.max_new_tokens, args.GetInt("max-new-tokens", 1024));
  INTERNVL_ASSIGN_OR_RETURN(double temperature, args.GetDouble("temperature", 0.0));
  if (!(temperature >= 0)) return absl::InvalidArgumentError("--temperature must be >= 0");  // NaN too
  g.do_sample = temperature > 0;
  g.temperature = temperature > 0 ? temperature : 1.0;
  INTERNVL_ASSIGN_OR_RETURN(g.top_p, args.GetDouble("top-p", 1.0));
  INTERNVL_ASSIGN_OR_RETURN(g.top_k, args.GetInt("top-k", 50));
  INTERNVL_ASSIGN_OR_RETURN(g.repetition_penalty, args.GetDouble("repetition-penalty", 1.0));
  INTERNVL_ASSIGN_OR_RETURN(g.frequency_penalty, args.GetDouble("frequency-penalty", 0.0));
  INTERNVL_ASSIGN_OR_RETURN(g.presence_penalty, args.GetDouble("presence-penalty", 0.0));
  INTERNVL_ASSIGN_OR_RETURN(int seed, args.GetInt("seed", 0));
  g.seed = static_cast<uint64_t>(seed);
  INTERNVL_RETURN_IF_ERROR(MiniMonkeyFromArgs(args, &r));
  g.stop = args.GetAll("stop");
  INTERNVL_RETURN_IF_ERROR(tokenizer::ValidateStopStrings(g.stop));
  if (g.top_p <= 0 || g.top_p > 1) return absl::InvalidArgumentError("--top-p must be in (0, 1]");
  if (g.top_k < 0) return absl::InvalidArgumentError("--top-k must be >= 0");
  if (g.repetition_penalty <= 0) return absl::InvalidArgumentError("--repetition-penalty must be > 0");
  if (!(g.frequency_penalty >= -2 && g.frequency_penalty <= 2))
    return absl::InvalidArgumentError("--frequency-penalty must be in [-2, 2]");
  if (!(g.presence_penalty >= -2 && g.presence_penalty <= 2))
    return absl::InvalidArgumentError("--presence-penalty must be in [-2, 2]");
  return r;
}

std::string ChatResultJson(const ChatResult& r) {
  nlohmann::ordered_json j = {
      {"response", r.response},
      {"token_ids", r.token_ids},
      {"prompt_tokens", r.prompt_tokens},
      {"completion_tokens", r.token_ids.size()},
      {"finish_reason", FinishReasonName(r.finish_reason)},
      {"cached_prompt_tokens", r.cached_prompt_tokens},
      {"num_patches_list", r.num_patches_list},
      {"timings",
       {{"preprocess_ms", r.timings.preprocess_ms},
        {"vision_ms", r.timings.vision_ms},
        {"queue_ms", r.timings.queue_ms},
        {"prefill_ms", r.timings.prefill_ms},
        {"decode_ms", r.timings.decode_ms},
        {"time_to_first_token_ms", r.timings.time_to_first_token_ms},
        {"total_ms", r.timings.total_ms}}},
  };
  if (!r.frame_indices.empty()) j["frame_indices"] = r.frame_indices;
  if (r.scm.applied)
    j["scm"] = {{"first_image_token", r.scm.first_image_token},
                {"high_tokens", r.scm.high_tokens},
                {"length_before", r.scm.length_before},
                {"length_after", r.scm.length_after}};
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::vector<FlagSpec> EngineFlags() {
  return {
      {"kv-cache-bytes", "KV cache budget in bytes (0 = --kv-cache-fraction of the memory limit)", true, false, "0"},
      {"kv-cache-fraction", "KV cache budget as a fraction of physical (or cgroup) memory", true, false, "0.25"},
      {"kv-cache-dtype",
       "KV cache elements: auto (the weights' dtype: bf16 for a bf16 model, K/V rounded to bf16 as the official bf16 "
       "model keeps them, half the bytes of fp32), bf16 or fp32 (exact where the model computes in fp32)",
       true, false, "auto"},
      {"block-size", "positions per KV cache block (prefix-reuse granularity)", true, false, "16"},
      {"max-num-seqs", "sequences decoding together at most", true, false, "32"},
      {"max-batched-tokens", "tokens per engine step (decodes first, then prompt chunks)", true, false, "512"},
      {"max-queued", "requests waiting for KV blocks or a batch slot before RESOURCE_EXHAUSTED", true, false, "64"},
      {"no-prefix-caching", "do not reuse the KV blocks of identical prompt prefixes", false, false, ""},
      {"quantize", "LLM weights quantized at load time: none, int8 or int4 (AWQ checkpoints are 4-bit as published)",
       true, false, "none"},
      {"head-candidates",
       "where the LLM layers are quantized (--quantize int8 or int4, AWQ checkpoints): the vocabulary head runs a "
       "4-bit pass, then recomputes each token's this many largest logits through its own weights (0: the head in "
       "one pass, int8 or 4-bit as --quantize says, an AWQ checkpoint's own head as stored)",
       true, false, "64"},
      {"vision-batch-tiles", "tiles of concurrent requests encoded in one vision forward", true, false, "16"},
      {"vision-batch-wait-ms", "how long a vision encode waits for others to join its batch", true, false, "2"},
      {"device", "where the models run: cpu, cuda or cuda:N (a CUDA libtorch build)", true, false, "cpu"},
  };
}

absl::Status EngineOptionsFromArgs(const Args& args, EngineOptions* o) {
  o->dtype = args.GetOr("dtype", o->dtype);
  INTERNVL_ASSIGN_OR_RETURN(o->threads, args.GetInt("threads", o->threads));
  o->device = args.GetOr("device", o->device);
  LlmEngineOptions& l = o->llm;
  INTERNVL_ASSIGN_OR_RETURN(double bytes, args.GetDouble("kv-cache-bytes", static_cast<double>(l.kv_cache_bytes)));
  if (bytes < 0 || bytes > 9e18) return absl::InvalidArgumentError("--kv-cache-bytes must be >= 0");
  l.kv_cache_bytes = static_cast<int64_t>(bytes);
  INTERNVL_ASSIGN_OR_RETURN(l.kv_cache_fraction, args.GetDouble("kv-cache-fraction", l.kv_cache_fraction));
  l.kv_cache_dtype = args.GetOr("kv-cache-dtype", l.kv_cache_dtype);
  INTERNVL_ASSIGN_OR_RETURN(l.block_size, args.GetInt("block-size", l.block_size));
  INTERNVL_ASSIGN_OR_RETURN(l.max_num_seqs, args.GetInt("max-num-seqs", l.max_num_seqs));
  INTERNVL_ASSIGN_OR_RETURN(int tokens, args.GetInt("max-batched-tokens", static_cast<int>(l.max_batched_tokens)));
  l.max_batched_tokens = tokens;
  INTERNVL_ASSIGN_OR_RETURN(int queued, args.GetInt("max-queued", static_cast<int>(l.max_waiting)));
  l.max_waiting = queued;
  l.prefix_caching = !args.Has("no-prefix-caching");
  l.quantize = args.GetOr("quantize", l.quantize);
  INTERNVL_ASSIGN_OR_RETURN(int candidates, args.GetInt("head-candidates", static_cast<int>(l.head_candidates)));
  l.head_candidates = candidates;
  INTERNVL_ASSIGN_OR_RETURN(o->vision_batching.max_batch_tiles,
                            args.GetInt("vision-batch-tiles", o->vision_batching.max_batch_tiles));
  INTERNVL_ASSIGN_OR_RETURN(int wait_ms, args.GetInt("vision-batch-wait-ms", 2));
  o->vision_batching.max_wait = absl::Milliseconds(wait_ms);
  INTERNVL_RETURN_IF_ERROR(o->vision_batching.Validate());
  return l.Validate();
}

}  // namespace internvl::cli
