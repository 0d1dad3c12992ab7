// Opens the sentencepiece plugin (see sp_processor.h for why it is one).
#include "core/tokenizer/sp_processor.h"

#include <dlfcn.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <mutex>

namespace internvl::tokenizer {
namespace {

constexpr char kPluginName[] = "libinternvl_sp.so";

// AddressSanitizer aborts any dlopen with RTLD_DEEPBIND (it would bypass its
// interceptors: google/sanitizers#611), so ASan builds (fuzz/, scripts/fuzz.sh)
// load the plugin without it. They link no libprotobuf (no torch, no gRPC
// next to a tokenizer), so the plugin still resolves its own protobuf copy.
#if defined(__SANITIZE_ADDRESS__)
constexpr int kDeepBind = 0;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr int kDeepBind = 0;
#else
constexpr int kDeepBind = RTLD_DEEPBIND;
#endif
#else
constexpr int kDeepBind = RTLD_DEEPBIND;
#endif

struct Plugin {
  SpCreateFn create = nullptr;
  std::string error;
};

// Candidates: $INTERNVL_SP_PLUGIN, the build tree's copy, then next to the
// executable and in ../lib (installed layouts, container images).
std::vector<std::string> Candidates() {
  std::vector<std::string> out;
  if (const char* env = std::getenv("INTERNVL_SP_PLUGIN"); env != nullptr && *env) out.push_back(env);
#ifdef INTERNVL_SP_PLUGIN_PATH
  out.push_back(INTERNVL_SP_PLUGIN_PATH);
#endif
  std::error_code ec;
  auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    out.push_back((exe.parent_path() / kPluginName).string());
    out.push_back((exe.parent_path() / ".." / "lib" / kPluginName).string());
  }
  out.push_back(kPluginName);  // the loader's search path
  return out;
}

const Plugin& GetPlugin() {
  static Plugin* plugin = [] {
    auto* p = new Plugin();
    std::string tried;
    for (const std::string& path : Candidates()) {
      if (path.find('/') != std::string::npos && !std::filesystem::exists(path)) continue;
      void* handle = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | kDeepBind);
      if (handle == nullptr) {
        tried += std::string(" ") + path + " (" + ::dlerror() + ")";
        continue;
      }
      p->create = reinterpret_cast<SpCreateFn>(::dlsym(handle, kSpCreateSymbol));
      if (p->create != nullptr) return p;
      tried += std::string(" ") + path + " (no " + kSpCreateSymbol + ")";
    }
    p->error = std::string("cannot load the sentencepiece plugin ") + kPluginName +
               " (set INTERNVL_SP_PLUGIN); tried:" + (tried.empty() ? " nothing found" : tried);
    return p;
  }();
  return *plugin;
}

}  // namespace

std::unique_ptr<SpProcessor> SpProcessor::Load(const std::string& path, std::string* error) {
  const Plugin& plugin = GetPlugin();
  if (plugin.create == nullptr) {
    *error = plugin.error;
    return nullptr;
  }
  return std::unique_ptr<SpProcessor>(plugin.create(path.c_str(), error));
}

}  // namespace internvl::tokenizer
