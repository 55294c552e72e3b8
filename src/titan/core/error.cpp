#include "titan/core/error.h"

namespace titan {

void fail_check(const char* cond, const char* file, int line, const std::string& msg) {
  throw InternalError(concat(file, ":", line, ": check failed: ", cond, msg.empty() ? "" : ": ", msg));
}

}  // namespace titan
