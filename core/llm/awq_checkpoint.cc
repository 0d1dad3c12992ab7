#include "core/llm/awq_checkpoint.h"

#include <ATen/ATen.h>

#include <filesystem>
#include <memory>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/config.h"
#include "core/files.h"
#include "core/llm/quant.h"
#include "core/nn/torch_util.h"
#include "core/safetensors.h"
#include "core/status.h"
#include "nlohmann/json.hpp"

namespace internvl::llm {

absl::Status ConvertCheckpointToAwq(const std::string& dir, int group) {
  INTERNVL_ASSIGN_OR_RETURN(InternVLConfig config, LoadInternVLConfig(dir));
  if (config.llm.awq) return absl::FailedPreconditionError(absl::StrCat(dir, " is an AWQ checkpoint already"));
  std::vector<std::string> old_files;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (absl::EndsWith(name, ".safetensors") || name == "model.safetensors.index.json") {
      old_files.push_back(entry.path().string());
    }
  }
  const std::string tmp = (std::filesystem::path(dir) / "model.safetensors.awq-partial").string();
  INTERNVL_RETURN_IF_ERROR(TorchGuard("writing the AWQ checkpoint", [&]() -> absl::Status {
    at::NoGradGuard no_grad;
    INTERNVL_ASSIGN_OR_RETURN(auto store, TensorStore::OpenDir(dir));
    SafetensorsWriter writer;
    int converted = 0;
    for (const std::string& name : store->Names()) {
      const TensorView& view = *store->Find(name);
      const bool linear = absl::StartsWith(name, "language_model.model.layers.") && absl::EndsWith(name, ".weight") &&
                          view.shape.size() == 2;
      if (!linear) {
        writer.Add(name, TensorAlias(view).clone());
        continue;
      }
      if (view.shape[1] % group != 0 || view.shape[0] % 8 != 0) {
        return absl::InvalidArgumentError(
            absl::StrCat(name, " [", view.shape[0], ", ", view.shape[1], "] cannot be stored in groups of ", group));
      }
      const auto t = QuantMatrix::QuantizeAwq(TensorFromView(view, at::kFloat), group, at::kHalf);
      const std::string base = name.substr(0, name.size() - std::string(".weight").size());
      writer.Add(base + ".qweight", t.qweight);
      writer.Add(base + ".qzeros", t.qzeros);
      writer.Add(base + ".scales", t.scales);
      ++converted;
    }
    if (converted == 0) return absl::InvalidArgumentError(absl::StrCat(dir, ": no LLM linear layers to convert"));
    return writer.Write(tmp, {{"format", "pt"}});
  }));
  for (const std::string& f : old_files) std::filesystem::remove(f);
  std::filesystem::rename(tmp, std::filesystem::path(dir) / "model.safetensors");
  // config.json as it was, plus quantization_config.
  const std::string config_path = (std::filesystem::path(dir) / "config.json").string();
  INTERNVL_ASSIGN_OR_RETURN(std::string text, ReadFile(config_path, 16 << 20));
  nlohmann::json j = nlohmann::json::parse(text);
  j["quantization_config"] = {
      {"quant_method", "awq"}, {"bits", 4}, {"group_size", group}, {"zero_point", true}, {"version", "gemm"}};
  return WriteFileAtomic(config_path, j.dump(2));
}

}  // namespace internvl::llm
