// `internvl download --model ORG/NAME[@REVISION]`: fetches what loading the
// model needs into the Hugging Face cache (shared with the Python
// huggingface_hub) and prints the snapshot directory on stdout, e.g. for a
// Kubernetes init container that fills a volume the serving pods then read
// with HF_HUB_OFFLINE=1. Environment: HF_HOME / HF_HUB_CACHE, HF_ENDPOINT,
// HF_TOKEN, HF_HUB_OFFLINE (see core/hub/hub_download.h).
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "cli/args.h"
#include "cli/command.h"
#include "core/hub/hub_download.h"

namespace internvl::cli {
namespace {

constexpr char kName[] = "download";
constexpr char kSummary[] = "download a model from the Hugging Face hub into the HF cache; prints the snapshot path";

const std::vector<FlagSpec>& Specs() {
  static const auto* specs = new std::vector<FlagSpec>{
      {"model", "Hugging Face id ORG/NAME, optionally @REVISION (branch, tag or commit)", true, false, ""},
      {"cache-dir", "hub cache directory", true, false, "$HF_HUB_CACHE, else $HF_HOME/hub"},
      {"endpoint", "hub URL", true, false, "$HF_ENDPOINT, else https://huggingface.co"},
      {"offline", "use the cache only (as HF_HUB_OFFLINE=1): fails when something is missing", false, false, ""},
      {"no-progress", "no progress bar (shown only when stderr is a terminal)", false, false, ""},
      {"help", "show this help", false, false, ""},
  };
  return *specs;
}

int Run(const std::vector<std::string>& argv) {
  int exit_code = 0;
  std::optional<Args> args = ParseCommandLine(kName, kSummary, Specs(), argv, &exit_code);
  if (!args) return exit_code;
  auto model = args->Require("model");
  if (!model.ok()) return ReportError(kName, model.status());
  hub::HubOptions options = hub::HubOptions::FromEnv();
  if (auto dir = args->Get("cache-dir")) options.cache_dir = *dir;
  if (auto endpoint = args->Get("endpoint")) {
    options.endpoint = *endpoint;
    while (!options.endpoint.empty() && options.endpoint.back() == '/') options.endpoint.pop_back();
  }
  if (args->Has("offline")) options.offline = true;
  if (args->Has("no-progress")) options.progress = false;
  auto snapshot = hub::ResolveOrDownloadModel(*model, options);
  if (!snapshot.ok()) return ReportError(kName, snapshot.status());
  std::cout << *snapshot << "\n";
  return 0;
}

static const bool kRegistered = RegisterCommand({kName, kSummary, &Run});

}  // namespace
}  // namespace internvl::cli
