#include "titan/core/folder_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "titan/core/error.h"

namespace titan {

namespace {
std::string read_owner(int fd) {
  char buf[256] = {};
  const ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
  std::string owner(buf, n > 0 ? static_cast<size_t>(n) : 0);
  while (!owner.empty() && (owner.back() == '\n' || owner.back() == '\0')) owner.pop_back();
  return owner.empty() ? "owner unknown" : owner;
}

std::string this_owner() {
  char host[256] = {};
  if (::gethostname(host, sizeof host - 1) != 0) std::strcpy(host, "unknown");
  return concat("pid ", ::getpid(), " on host ", host, "\n");
}
}  // namespace

FolderLock::FolderLock(const std::string& folder, const std::string& key, std::ostream& log) {
  std::error_code ec;
  std::filesystem::create_directories(folder, ec);
  if (ec) throw UserError(concat(key, ": cannot create '", folder, "': ", ec.message()));
  const std::string path = (std::filesystem::path(folder) / kFileName).string();
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) throw UserError(concat(key, ": cannot create the run lock '", path, "': ", std::strerror(errno)));
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    if (err == EWOULDBLOCK) {
      const std::string owner = read_owner(fd_);
      ::close(fd_);
      fd_ = -1;
      throw UserError(concat(key, ": '", folder, "' is in use by another titan run (", owner,
                             "); wait for it to end, or give this run another ", key));
    }
    // ENOLCK, EOPNOTSUPP, ENOSYS: locks are not to be had here; a run must still be possible.
    log << "warning: " << key << ": '" << folder << "': the filesystem refuses locks (" << std::strerror(err)
        << "); a second run on this folder would not be stopped\n";
    ::close(fd_);
    fd_ = -1;
    return;
  }
  const std::string owner = this_owner();  // for the message a refused run prints
  // Written before the cut, so a refused run never reads an empty file.
  if (::pwrite(fd_, owner.data(), owner.size(), 0) != static_cast<ssize_t>(owner.size()) ||
      ::ftruncate(fd_, static_cast<off_t>(owner.size())) != 0)
    log << "warning: " << path << ": cannot record the owner (" << std::strerror(errno) << ")\n";
}

FolderLock::~FolderLock() {
  if (fd_ >= 0) ::close(fd_);  // releases the lock; the file stays (removing it would race a waiting run)
}

}  // namespace titan
