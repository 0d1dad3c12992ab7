// Fuzzes the checkpoint readers: the safetensors header/offset parser
// (SafetensorsFile::Open, which only opens paths, so the input is written to
// a scratch file), TensorStore over a folder with an index, and config.json /
// generation_config.json parsing.
//
// Input: one mode byte, then the payload.
//   mode % 3 == 0: payload is a .safetensors file.
//   mode % 3 == 1: payload is config.json text (ParseInternVLConfig); an
//                  accepted config must survive InternVLConfigToJson and back.
//   mode % 3 == 2: payload is a model folder packed as parts separated by
//                  "\n@@@@\n": model.safetensors.index.json, then shards
//                  a.safetensors, b.safetensors, then config.json and
//                  generation_config.json.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/strings/string_view.h"
#include "core/config.h"
#include "core/safetensors.h"
#include "fuzz/fuzz_util.h"

namespace internvl::fuzz {
namespace {

// Reads every tensor the way loaders do (views, float conversion).
void Exercise(const TensorStore& store) {
  for (const std::string& name : store.Names()) {
    auto view = store.Get(name);
    if (!view.ok()) std::abort();  // Names() and Get() disagree
    const TensorView& v = **view;
    if (v.nbytes != static_cast<size_t>(v.numel()) * DTypeSize(v.dtype)) std::abort();
    auto floats = ToFloatVector(v);
    if (floats.ok() && floats->size() != static_cast<size_t>(v.numel())) std::abort();
  }
}

void FuzzSafetensors(absl::string_view payload) {
  const std::string path = WriteScratchFile("model.safetensors", payload);
  auto file = SafetensorsFile::Open(path);
  if (!file.ok()) return;
  for (const std::string& name : (*file)->Names()) {
    const TensorView* v = (*file)->Find(name);
    if (v == nullptr) std::abort();
    // An accepted view lies inside the mapped data.
    if (v->nbytes > payload.size()) std::abort();
  }
  auto store = TensorStore::OpenFiles({path});
  if (store.ok()) Exercise(**store);
}

void FuzzConfig(absl::string_view payload) {
  auto config = ParseInternVLConfig(payload, "config.json");
  if (!config.ok()) return;
  (void)config->num_image_token();
  (void)config->llm.head_dim();
  // What make-model and the trainer write must read back as the same config.
  const std::string json = InternVLConfigToJson(*config);
  auto again = ParseInternVLConfig(json, "round-trip config.json");
  if (!again.ok()) {
    std::fprintf(stderr, "accepted config does not round-trip: %s\n%s\n", again.status().ToString().c_str(),
                 json.c_str());
    std::abort();
  }
  if (again->llm.arch != config->llm.arch || again->llm.hidden_size != config->llm.hidden_size ||
      again->vision.hidden_size != config->vision.hidden_size || again->image_size() != config->image_size() ||
      again->num_image_token() != config->num_image_token() || again->template_name != config->template_name)
    std::abort();
}

void FuzzFolder(absl::string_view payload) {
  static const char* const kNames[] = {"model.safetensors.index.json", "a.safetensors", "b.safetensors", "config.json",
                                       "generation_config.json"};
  constexpr size_t kParts = sizeof(kNames) / sizeof(kNames[0]);
  WriteScratchFiles(payload, kPartSeparator, kNames, kParts);
  RemoveScratchFile("model.safetensors");
  auto store = TensorStore::OpenDir(ScratchDir());
  if (store.ok()) Exercise(**store);
  auto config = LoadInternVLConfig(ScratchDir());
  if (config.ok()) (void)config->num_image_token();
  (void)LoadGenerationConfig(ScratchDir());
}

}  // namespace
}  // namespace internvl::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace internvl::fuzz;
  if (size < 1 || size > kMaxInputBytes) return 0;
  const absl::string_view payload(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 3) {
    case 0:
      FuzzSafetensors(payload);
      break;
    case 1:
      FuzzConfig(payload);
      break;
    default:
      FuzzFolder(payload);
      break;
  }
  return 0;
}
