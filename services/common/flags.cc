#include "services/common/flags.h"

namespace internvl::services {

NormalizedArgs::NormalizedArgs(int argc, char** argv) {
  bool flags_done = false;
  for (int i = 0; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--") flags_done = true;
    if (i > 0 && !flags_done && arg.size() > 2 && arg[0] == '-') {
      const size_t start = arg[1] == '-' ? 2 : 1;
      const size_t end = arg.find('=');
      for (size_t k = start; k < std::min(end, arg.size()); ++k) {
        if (arg[k] == '-') arg[k] = '_';
      }
    }
    storage_.push_back(std::move(arg));
  }
  for (std::string& s : storage_) pointers_.push_back(s.data());
  pointers_.push_back(nullptr);
}

}  // namespace internvl::services
