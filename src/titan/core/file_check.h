// Why a path a user gave cannot be read as a file, said as it is: a FIFO or a device would block
// a reader forever, and a directory or a permission problem must not read as "empty" or "missing".
#pragma once
#include <string>

namespace titan {

// unreadable_file_reason's answer for a path that does not exist, for callers that say "missing".
inline constexpr const char* kNoSuchFile = "no such file";

// "" when `path` is a regular file this process can open for reading; otherwise the reason, as
// a phrase: "no such file", "it is a directory, expected a file", "it is a FIFO (named pipe),
// not a regular file", "Permission denied", ...
std::string unreadable_file_reason(const std::string& path);

// Throws UserError "<path>: cannot open <what>: <reason>" unless `path` is a readable regular file.
void require_readable_file(const std::string& path, const std::string& what);

}  // namespace titan
