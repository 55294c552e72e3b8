#include "titan/cli/args.h"

#include <cmath>

#include "titan/core/error.h"

namespace titan::cli {

std::string ParsedArgs::required(const std::string& f, const std::string& command) const {
  auto it = values.find(f);
  if (it == values.end() || it->second.empty()) throw UserError(concat(command, ": missing --", f));
  if (it->second.size() > 1) throw UserError(concat(command, ": --", f, " given more than once"));
  return it->second.front();
}

std::string ParsedArgs::get(const std::string& f, const std::string& fallback) const {
  return values.count(f) ? required(f, "") : fallback;
}

int64_t ParsedArgs::get_int(const std::string& f, int64_t fallback, const std::string& command) const {
  if (!values.count(f)) return fallback;
  const std::string v = required(f, command);
  try {
    size_t used = 0;
    const int64_t x = std::stoll(v, &used);
    if (used == v.size()) return x;
  } catch (const std::exception&) {
  }
  throw UserError(concat(command, ": --", f, ": expected an integer, found '", v, "'"));
}

double ParsedArgs::get_real(const std::string& f, double fallback, const std::string& command) const {
  if (!values.count(f)) return fallback;
  const std::string v = required(f, command);
  try {
    size_t used = 0;
    const double x = std::stod(v, &used);
    if (used == v.size() && std::isfinite(x)) return x;
  } catch (const std::exception&) {
  }
  throw UserError(concat(command, ": --", f, ": expected a number, found '", v, "'"));
}

ParsedArgs parse_args(const std::vector<std::string>& args, const std::set<std::string>& valued,
                      const std::set<std::string>& bare, const std::string& command,
                      const std::set<std::string>& multi) {
  ParsedArgs out;
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--help" || args[i] == "-h") throw HelpRequested{};
    if (args[i].rfind("--", 0) != 0) throw UserError(concat(command, ": unexpected argument '", args[i], "'"));
    std::string name = args[i].substr(2), value;
    const size_t eq = name.find('=');
    const bool inline_value = eq != std::string::npos;
    if (inline_value) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    if (bare.count(name) && !inline_value) {
      out.flags.insert(name);
    } else if (multi.count(name)) {
      if (inline_value) out.values[name].push_back(value);
      while (i + 1 < args.size() && args[i + 1].rfind("--", 0) != 0) out.values[name].push_back(args[++i]);
      if (!out.values.count(name)) throw UserError(concat(command, ": --", name, " needs a value"));
    } else if (valued.count(name)) {
      if (!inline_value) {
        if (i + 1 >= args.size()) throw UserError(concat(command, ": --", name, " needs a value"));
        value = args[++i];
      }
      out.values[name].push_back(value);
    } else {
      throw UserError(concat(command, ": unknown option --", name));
    }
  }
  return out;
}

}  // namespace titan::cli
