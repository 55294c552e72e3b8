#include "titan/core/env.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <string>

#include "titan/core/error.h"

namespace titan {

namespace {
bool parse_int(const char* v, long& out) {
  char* end = nullptr;
  errno = 0;
  out = std::strtol(v, &end, 10);
  return *v != '\0' && *end == '\0' && errno == 0;
}
}  // namespace

int env_int(const char* name, int fallback, int min_value, int max_value) {
  const char* v = std::getenv(name);
  if (!v) return fallback;
  long n = 0;
  if (!parse_int(v, n) || n < min_value || n > max_value)
    throw UserError(concat("environment: ", name, "=", v, ": expected an integer from ", min_value, " to ", max_value));
  return static_cast<int>(n);
}

int env_one_of(const char* name, std::initializer_list<int> allowed, int fallback) {
  const char* v = std::getenv(name);
  if (!v) return fallback;
  long n = 0;
  if (parse_int(v, n) && std::find(allowed.begin(), allowed.end(), n) != allowed.end()) return static_cast<int>(n);
  std::string expected;
  for (int a : allowed) expected += (expected.empty() ? "" : " or ") + std::to_string(a);
  throw UserError(concat("environment: ", name, "=", v, ": expected ", expected));
}

std::string env_word(const char* name, std::initializer_list<const char*> allowed, const char* fallback) {
  const char* v = std::getenv(name);
  if (!v) return fallback;
  std::string expected;
  for (const char* a : allowed) {
    if (std::string(v) == a) return v;
    expected += (expected.empty() ? "" : " or ") + std::string(a);
  }
  throw UserError(concat("environment: ", name, "=", v, ": expected ", expected));
}

}  // namespace titan
