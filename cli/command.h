// The `internvl` command line: one binary, subcommands registered by the
// cmd_*.cc files compiled into it (each owns its flags; see args.h).
#pragma once

#include <string>
#include <vector>

namespace internvl::cli {

struct Command {
  const char* name;
  const char* summary;  // one line for `internvl --help`
  // Runs the command on the arguments after its name; returns the exit code.
  int (*run)(const std::vector<std::string>& args);
};

// Called from a static initialiser in each cmd_*.cc:
//   static const bool registered = RegisterCommand({"encode", "...", &Run});
bool RegisterCommand(const Command& command);
const std::vector<Command>& Commands();

}  // namespace internvl::cli
