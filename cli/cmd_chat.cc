// `internvl chat`: the whole model in this process (chat() of the official
// implementation). Streams the answer to stdout; --json ends with one JSON
// line {"response", "token_ids", "prompt_tokens", "timings", ...}.
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "cli/args.h"
#include "cli/chat_flags.h"
#include "cli/command.h"
#include "core/chat/chat_pipeline.h"
#include "core/status.h"

namespace internvl::cli {
namespace {

constexpr char kName[] = "chat";
constexpr char kSummary[] = "chat with a model in this process (images, video, history)";

std::vector<FlagSpec> Specs() {
  std::vector<FlagSpec> specs = {
      {"model", "model directory or Hugging Face id in the local cache", true, false, ""},
      {"dtype", "compute dtype: fp32 or bf16", true, false, "bf16"},
      {"threads", "intra-op threads (0 = all cores)", true, false, "0"},
      {"minimonkey", "serve the model as MiniMonkey even if its config does not name it", false, false, ""},
      {"help", "show this help", false, false, ""},
  };
  for (auto& f : ChatRequestFlags()) specs.push_back(f);
  for (auto& f : EngineFlags()) specs.push_back(f);
  return specs;
}

int Run(const std::vector<std::string>& argv) {
  const auto specs = Specs();
  int exit_code = 0;
  std::optional<Args> args = ParseCommandLine(kName, kSummary, specs, argv, &exit_code);
  if (!args) return exit_code;
  absl::StatusOr<ChatRequest> request = ChatRequestFromArgs(*args);
  absl::StatusOr<std::string> model = args->Require("model");
  if (!request.ok() || !model.ok()) {
    ReportError(kName, !model.ok() ? model.status() : request.status());
    std::cerr << Args::Usage(kName, kSummary, specs);
    return 2;
  }
  EngineOptions engine;
  if (absl::Status s = EngineOptionsFromArgs(*args, &engine); !s.ok()) return ReportError(kName, s);
  PipelineOptions options;
  options.dtype = engine.dtype;
  options.threads = engine.threads;
  options.device = engine.device;
  options.llm = engine.llm;
  options.vision_batching = engine.vision_batching;
  options.minimonkey = args->Has("minimonkey");
  auto pipeline = ChatPipeline::Load(*model, options);
  if (!pipeline.ok()) return ReportError(kName, pipeline.status());
  auto result = (*pipeline)->Chat(*request, [](absl::string_view delta) {
    std::cout << delta << std::flush;
    return true;
  });
  std::cout << "\n";
  if (!result.ok()) return ReportError(kName, result.status());
  if (args->Has("json")) std::cout << ChatResultJson(*result) << "\n";
  return 0;
}

static const bool kRegistered = RegisterCommand({kName, kSummary, &Run});

}  // namespace
}  // namespace internvl::cli
