// `internvl`: the command line. Subcommands live in cmd_*.cc.
#include <iostream>
#include <string>
#include <vector>

#include "cli/command.h"

namespace internvl::cli {

std::vector<Command>& MutableCommands() {
  static std::vector<Command>* commands = new std::vector<Command>();
  return *commands;
}

bool RegisterCommand(const Command& command) {
  MutableCommands().push_back(command);
  return true;
}

const std::vector<Command>& Commands() { return MutableCommands(); }

}  // namespace internvl::cli

int main(int argc, char** argv) {
  using internvl::cli::Commands;
  auto usage = [] {
    std::cerr << "usage: internvl COMMAND [flags]   (internvl COMMAND --help for its flags)\ncommands:\n";
    for (const auto& c : Commands()) std::cerr << "  " << c.name << "  " << c.summary << "\n";
  };
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
    usage();
    return argc < 2 ? 2 : 0;
  }
  const std::string name = argv[1];
  for (const auto& c : Commands()) {
    if (name == c.name) return c.run(std::vector<std::string>(argv + 2, argv + argc));
  }
  std::cerr << "internvl: unknown command '" << name << "'\n";
  usage();
  return 2;
}
