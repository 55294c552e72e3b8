#include "titan/core/file_check.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "titan/core/error.h"

namespace titan {

namespace {
const char* kind_of(mode_t mode) {
  if (S_ISDIR(mode)) return "it is a directory, expected a file";
  if (S_ISFIFO(mode)) return "it is a FIFO (named pipe), not a regular file (reading it could block forever)";
  if (S_ISSOCK(mode)) return "it is a socket, not a regular file";
  if (S_ISCHR(mode) || S_ISBLK(mode)) return "it is a device, not a regular file";
  return nullptr;
}
}  // namespace

std::string unreadable_file_reason(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return errno == ENOENT ? kNoSuchFile : std::strerror(errno);
  if (const char* kind = kind_of(st.st_mode)) return kind;
  // Opening is the only exact test of permission (root, ACLs, read-only mounts all differ).
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return std::strerror(errno);
  ::close(fd);
  return "";
}

void require_readable_file(const std::string& path, const std::string& what) {
  if (const std::string why = unreadable_file_reason(path); !why.empty())
    throw UserError(concat(path, ": cannot open ", what, ": ", why));
}

}  // namespace titan
