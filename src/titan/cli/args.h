// Small helpers for sub-command flags: --name value, --name=value, bare --flag.
#pragma once
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace titan::cli {

struct ParsedArgs {
  std::map<std::string, std::vector<std::string>> values;  // flag -> values in order
  std::set<std::string> flags;                             // bare flags present
  bool has(const std::string& f) const { return flags.count(f) || values.count(f); }
  // The single value of a required flag; UserError naming `command` when absent.
  std::string required(const std::string& f, const std::string& command) const;
  std::string get(const std::string& f, const std::string& fallback) const;
  // The flag's value as a number, `fallback` when absent; UserError naming `command` and the
  // flag when it is not one.
  int64_t get_int(const std::string& f, int64_t fallback, const std::string& command) const;
  double get_real(const std::string& f, double fallback, const std::string& command) const;
};

// --help or -h anywhere among a sub-command's flags: the command prints its usage and exits 0.
struct HelpRequested {};

// `valued` flags take one value each (repeatable); `bare` flags take none; `multi` flags take
// every following argument up to the next --flag (so a shell glob works). --help and -h throw
// HelpRequested. Anything else is a UserError naming `command`.
ParsedArgs parse_args(const std::vector<std::string>& args, const std::set<std::string>& valued,
                      const std::set<std::string>& bare, const std::string& command,
                      const std::set<std::string>& multi = {});

}  // namespace titan::cli
