// `internvl prompt`: the query InternVLChatModel.chat() builds, printed as
// text (or, with --ids, as the token ids the model would be fed).
//
//   internvl prompt --model DIR --text "Describe the image." --num-patches 4 --expand
//   internvl prompt --template internvl2_5 --text "Hi" --history hist.json
//   internvl prompt --template Hermes-2 --video-frames 8 --text "What happens?" --expand
//
// --model takes the template, system_message and num_image_token from the
// model's config.json; --template uses the template's defaults (256 tokens
// per tile). --history is a JSON list of [question, answer] pairs. Each
// --num-patches is one image (its tile count); with images and no history the
// question gets "<image>\n" in front unless it already has "<image>", as
// chat() does. --expand replaces each "<image>" (first first) with
// <img><IMG_CONTEXT>x(256*patches)</img>.
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "cli/args.h"
#include "cli/command.h"
#include "core/config.h"
#include "core/files.h"
#include "core/status.h"
#include "core/tokenizer/chat_template.h"
#include "core/tokenizer/tokenizer.h"
#include "nlohmann/json.hpp"

namespace internvl::cli {
namespace {

constexpr char kName[] = "prompt";
constexpr char kSummary[] = "render the chat() prompt of a model or template";
// (448 / 14)^2 * 0.5^2: InternVL's tokens per 448px tile, used with --template.
constexpr int kDefaultNumImageToken = 256;

const std::vector<FlagSpec>& Specs() {
  static const auto* specs = new std::vector<FlagSpec>{
      {"model", "model folder (config.json: template, system_message; tokenizer for --ids)", true, false, ""},
      {"template", "template name instead of --model (Hermes-2, internlm2-chat, internvl2_5, phi3-chat)",
       true, false, ""},
      {"text", "the question", true, false, ""},
      {"history", "JSON file: list of [question, answer] pairs", true, false, ""},
      {"num-patches", "tiles of one image, one flag per image in order", true, true, ""},
      {"video-frames", "build the video question Frame1: <image>\\n... with N one-tile frames", true, false, ""},
      {"system", "system message (default: config's system_message or the template's)", true, false, ""},
      {"num-image-token", "tokens per tile (default: from config.json, else 256)", true, false, ""},
      {"expand", "expand <image> into <img><IMG_CONTEXT>...</img>", false, false, ""},
      {"ids", "print the token ids (JSON) of the expanded prompt; needs --model", false, false, ""},
      {"help", "show this help", false, false, ""},
  };
  return *specs;
}

absl::StatusOr<tokenizer::ChatHistory> ReadHistory(const std::string& path) {
  INTERNVL_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  const auto bad = absl::InvalidArgumentError(
      absl::StrCat(path, ": expected a JSON list of [question, answer] string pairs"));
  if (j.is_discarded() || !j.is_array()) return bad;
  tokenizer::ChatHistory history;
  for (const auto& pair : j) {
    if (!pair.is_array() || pair.size() != 2 || !pair[0].is_string() || !pair[1].is_string()) return bad;
    history.emplace_back(pair[0].get<std::string>(), pair[1].get<std::string>());
  }
  return history;
}

absl::StatusOr<std::string> RunPrompt(const Args& args) {
  const std::optional<std::string> model = args.Get("model");
  const std::optional<std::string> template_name = args.Get("template");
  if (model.has_value() == template_name.has_value()) {
    return absl::InvalidArgumentError("give exactly one of --model and --template");
  }
  INTERNVL_ASSIGN_OR_RETURN(std::string question, args.Require("text"));
  const tokenizer::ChatTemplate* chat_template = nullptr;
  std::optional<std::string> config_system;
  int num_image_token = kDefaultNumImageToken;
  if (model) {
    INTERNVL_ASSIGN_OR_RETURN(InternVLConfig config, LoadInternVLConfig(*model));
    INTERNVL_ASSIGN_OR_RETURN(chat_template, tokenizer::GetTemplate(config.template_name));
    config_system = config.system_message;
    num_image_token = config.num_image_token();
  } else {
    INTERNVL_ASSIGN_OR_RETURN(chat_template, tokenizer::GetTemplate(*template_name));
  }
  INTERNVL_ASSIGN_OR_RETURN(num_image_token, args.GetInt("num-image-token", num_image_token));

  std::vector<int> num_patches;
  for (const std::string& v : args.GetAll("num-patches")) {
    int n;
    if (!absl::SimpleAtoi(v, &n) || n <= 0) {
      return absl::InvalidArgumentError(absl::StrCat("--num-patches must be a positive integer, got \"", v, "\""));
    }
    num_patches.push_back(n);
  }
  INTERNVL_ASSIGN_OR_RETURN(int frames, args.GetInt("video-frames", 0));
  if (frames < 0) return absl::InvalidArgumentError("--video-frames must be positive");
  if (frames > 0) {
    if (!num_patches.empty()) return absl::InvalidArgumentError("--video-frames and --num-patches exclude each other");
    question = tokenizer::BuildVideoQuestion(frames, question);
    num_patches.assign(frames, 1);
  }
  std::optional<tokenizer::ChatHistory> history;
  if (auto path = args.Get("history")) {
    INTERNVL_ASSIGN_OR_RETURN(history, ReadHistory(*path));
  }
  question = tokenizer::BuildChatQuestion(question, !num_patches.empty(), history.has_value());
  const std::string system =
      args.Get("system").value_or(tokenizer::SystemMessageFor(*chat_template, config_system));
  std::string prompt = tokenizer::RenderPrompt(*chat_template, system,
                                               history.value_or(tokenizer::ChatHistory{}), question);
  if (args.Has("expand") || args.Has("ids")) {
    INTERNVL_ASSIGN_OR_RETURN(prompt, tokenizer::ExpandImageTokens(prompt, num_patches, num_image_token));
  }
  if (!args.Has("ids")) return prompt;
  if (!model) return absl::InvalidArgumentError("--ids needs --model (the tokenizer lives in the model folder)");
  INTERNVL_ASSIGN_OR_RETURN(auto tok, tokenizer::Tokenizer::Load(*model));
  INTERNVL_ASSIGN_OR_RETURN(std::vector<int> ids, tok->Encode(prompt));
  return nlohmann::json(ids).dump();
}

int Run(const std::vector<std::string>& argv) {
  int exit_code = 0;
  std::optional<Args> args = ParseCommandLine(kName, kSummary, Specs(), argv, &exit_code);
  if (!args) return exit_code;
  auto out = RunPrompt(*args);
  if (!out.ok()) return ReportError(kName, out.status());
  // The prompt ends with the assistant role's "\n"; print it as is.
  std::cout << *out;
  if (args->Has("ids")) std::cout << "\n";
  return 0;
}

static const bool kRegistered = RegisterCommand({kName, kSummary, &Run});

}  // namespace
}  // namespace internvl::cli
