// A small, strict flag parser for the CLI's subcommands: `--name value`,
// `--name=value`, boolean `--name`, repeatable flags. Unknown flags and
// missing values are errors (exit code 2 with a message).
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace internvl::cli {

struct FlagSpec {
  std::string name;  // without dashes
  std::string help;
  bool takes_value = true;
  bool repeatable = false;
  std::string default_value;  // shown in help only
};

class Args {
 public:
  static absl::StatusOr<Args> Parse(const std::vector<std::string>& argv,
                                    const std::vector<FlagSpec>& specs);

  bool Has(const std::string& name) const { return values_.count(name) > 0; }
  std::optional<std::string> Get(const std::string& name) const;
  std::string GetOr(const std::string& name, const std::string& fallback) const;
  std::vector<std::string> GetAll(const std::string& name) const;
  absl::StatusOr<int> GetInt(const std::string& name, int fallback) const;
  absl::StatusOr<double> GetDouble(const std::string& name, double fallback) const;
  absl::StatusOr<std::string> Require(const std::string& name) const;

  static std::string Usage(const std::string& command, const std::string& summary,
                           const std::vector<FlagSpec>& specs);

 private:
  std::map<std::string, std::vector<std::string>> values_;
};

// The start of every subcommand: parses `argv` against `specs`. Returns the
// flags, or nullopt with *exit_code set when the command is already done:
// 0 after printing the usage for --help, 2 after reporting a bad flag and the
// usage on stderr.
std::optional<Args> ParseCommandLine(const std::string& command, const std::string& summary,
                                     const std::vector<FlagSpec>& specs, const std::vector<std::string>& argv,
                                     int* exit_code);

// Prints `status` as "internvl <command>: error: ..." to stderr and returns 1
// (2 for INVALID_ARGUMENT from flag parsing).
int ReportError(const std::string& command, const absl::Status& status);

}  // namespace internvl::cli
