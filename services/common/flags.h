// Lets service binaries accept both --metrics-port and --metrics_port: Abseil
// flag names are C identifiers (underscores), while Kubernetes manifests and
// the docs spell flags with dashes.
#pragma once

#include <string>
#include <vector>

namespace internvl::services {

// Copies argv, rewriting '-' to '_' in the NAME part of "--name[=value]"
// arguments (values and positional arguments are untouched; "--" ends
// flags). The returned strings back the returned char* vector.
class NormalizedArgs {
 public:
  NormalizedArgs(int argc, char** argv);
  int argc() const { return static_cast<int>(pointers_.size()) - 1; }
  char** argv() { return pointers_.data(); }

 private:
  std::vector<std::string> storage_;
  std::vector<char*> pointers_;
};

}  // namespace internvl::services
