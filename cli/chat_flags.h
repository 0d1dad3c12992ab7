// Flags shared by `internvl chat` and `internvl client chat`: the request
// (images, video, history, generation settings) and its JSON result line.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "cli/args.h"
#include "core/chat/chat_pipeline.h"

namespace internvl::cli {

// --image (repeatable), --max-num, --video, --num-segments, --text,
// --history, --max-new-tokens, --temperature, --top-p, --top-k,
// --repetition-penalty, --seed, --json.
std::vector<FlagSpec> ChatRequestFlags();

// --minimonkey-order, --minimonkey-ranges, --minimonkey-rule as tiling
// options (unset when none is given; the demo's defaults for the others).
absl::StatusOr<std::optional<preprocess::MiniMonkeyOptions>> MiniMonkeyTilingFromArgs(const Args& args);

// --scm, --minimonkey-order, --minimonkey-ranges, --minimonkey-rule into
// the request (its MiniMonkey settings stay unset when none of the last three
// is given).
absl::Status MiniMonkeyFromArgs(const Args& args, ChatRequest* request);

// Reads the files named by the flags and fills a request. Greedy unless
// --temperature > 0 is given (the demo's do_sample=False).
absl::StatusOr<ChatRequest> ChatRequestFromArgs(const Args& args);

// {"response":..., "token_ids":[...], "prompt_tokens":N, "timings":{...}}
std::string ChatResultJson(const ChatResult& result);

// The inference engine's flags shared by `internvl chat` and `internvl serve`:
// --kv-cache-bytes, --kv-cache-fraction, --block-size, --max-num-seqs,
// --max-batched-tokens, --max-queued, --no-prefix-caching,
// --vision-batch-tiles, --vision-batch-wait-ms (--dtype and --threads are
// each command's own).
std::vector<FlagSpec> EngineFlags();
// Reads them (and --dtype, --threads) into `options`.
absl::Status EngineOptionsFromArgs(const Args& args, EngineOptions* options);

}  // namespace internvl::cli
