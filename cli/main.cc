// `internvl`: the command line. Subcommands live in cmd_*.cc.
#include <exception>
#include <iostream>
#include <new>
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
    if (name != c.name) continue;
    // The last line of defence: a request the limits missed must still end
    // with a message and an exit code, not an abort.
    try {
      return c.run(std::vector<std::string>(argv + 2, argv + argc));
    } catch (const std::bad_alloc&) {
      std::cerr << "internvl " << name << ": error: RESOURCE_EXHAUSTED: out of memory\n";
      return 1;
    } catch (const std::exception& e) {
      std::cerr << "internvl " << name << ": error: INTERNAL: " << e.what() << "\n";
      return 1;
    }
  }
  std::cerr << "internvl: unknown command '" << name << "'\n";
  usage();
  return 2;
}
