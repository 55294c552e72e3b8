// Errors that reach the user: one line saying what was expected, what was found, and where.
#pragma once
#include <stdexcept>
#include <string>
#include <sstream>

namespace titan {

// A user-facing error (bad config, flag, file): printed as one line, exit code 2.
class UserError : public std::runtime_error {
 public:
  explicit UserError(const std::string& msg) : std::runtime_error(msg) {}
};

// An internal invariant broke: a bug in titan, not in the user's input.
class InternalError : public std::logic_error {
 public:
  explicit InternalError(const std::string& msg) : std::logic_error(msg) {}
};

template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

[[noreturn]] void fail_check(const char* cond, const char* file, int line, const std::string& msg);

}  // namespace titan

// Internal invariant: throws InternalError naming the condition, file and line.
#define TITAN_CHECK(cond, ...)                                                      \
  do {                                                                              \
    if (!(cond)) ::titan::fail_check(#cond, __FILE__, __LINE__, ::titan::concat(__VA_ARGS__)); \
  } while (0)
