#include "cli/args.h"

#include <cstdio>
#include <iostream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace internvl::cli {

absl::StatusOr<Args> Args::Parse(const std::vector<std::string>& argv, const std::vector<FlagSpec>& specs) {
  Args out;
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& a = argv[i];
    if (a.rfind("--", 0) != 0 || a.size() == 2)
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", a, "'"));
    std::string name = a.substr(2);
    std::optional<std::string> inline_value;
    if (auto eq = name.find('='); eq != std::string::npos) {
      inline_value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    const FlagSpec* spec = nullptr;
    for (const auto& s : specs)
      if (s.name == name) spec = &s;
    if (spec == nullptr) return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name));
    std::string value = "true";
    if (spec->takes_value) {
      if (inline_value) {
        value = *inline_value;
      } else {
        if (i + 1 >= argv.size()) return absl::InvalidArgumentError(absl::StrCat("flag --", name, " needs a value"));
        value = argv[++i];
      }
    } else if (inline_value) {
      value = *inline_value;
    }
    auto& slot = out.values_[name];
    if (!slot.empty() && !spec->repeatable)
      return absl::InvalidArgumentError(absl::StrCat("flag --", name, " given more than once"));
    slot.push_back(value);
  }
  return out;
}

std::optional<std::string> Args::Get(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end()) return std::nullopt;
  return it->second.back();
}

std::string Args::GetOr(const std::string& name, const std::string& fallback) const {
  return Get(name).value_or(fallback);
}

std::vector<std::string> Args::GetAll(const std::string& name) const {
  auto it = values_.find(name);
  return it == values_.end() ? std::vector<std::string>{} : it->second;
}

absl::StatusOr<int> Args::GetInt(const std::string& name, int fallback) const {
  auto v = Get(name);
  if (!v) return fallback;
  int out;
  if (!absl::SimpleAtoi(*v, &out)) return absl::InvalidArgumentError(absl::StrCat("--", name, " must be an integer, got '", *v, "'"));
  return out;
}

absl::StatusOr<double> Args::GetDouble(const std::string& name, double fallback) const {
  auto v = Get(name);
  if (!v) return fallback;
  double out;
  if (!absl::SimpleAtod(*v, &out)) return absl::InvalidArgumentError(absl::StrCat("--", name, " must be a number, got '", *v, "'"));
  return out;
}

absl::StatusOr<std::string> Args::Require(const std::string& name) const {
  auto v = Get(name);
  if (!v) return absl::InvalidArgumentError(absl::StrCat("missing required flag --", name));
  return *v;
}

std::string Args::Usage(const std::string& command, const std::string& summary, const std::vector<FlagSpec>& specs) {
  std::string out = absl::StrCat("usage: internvl ", command, " [flags]\n  ", summary, "\nflags:\n");
  for (const auto& s : specs) {
    absl::StrAppend(&out, "  --", s.name, s.takes_value ? " VALUE" : "", "  ", s.help);
    if (!s.default_value.empty()) absl::StrAppend(&out, " (default ", s.default_value, ")");
    if (s.repeatable) absl::StrAppend(&out, " (repeatable)");
    out += "\n";
  }
  return out;
}

std::optional<Args> ParseCommandLine(const std::string& command, const std::string& summary,
                                     const std::vector<FlagSpec>& specs, const std::vector<std::string>& argv,
                                     int* exit_code) {
  auto args = Args::Parse(argv, specs);
  if (args.ok() && args->Has("help")) {
    std::cout << Args::Usage(command, summary, specs);
    *exit_code = 0;
    return std::nullopt;
  }
  if (!args.ok()) {
    ReportError(command, args.status());
    std::cerr << Args::Usage(command, summary, specs);
    *exit_code = 2;
    return std::nullopt;
  }
  return std::move(*args);
}

int ReportError(const std::string& command, const absl::Status& status) {
  std::cerr << "internvl " << command << ": error: " << status.message() << " ["
            << absl::StatusCodeToString(status.code()) << "]\n";
  return 1;
}

}  // namespace internvl::cli
