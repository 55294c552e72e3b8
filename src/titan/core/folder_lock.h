// A run owns its output folders while it lives: a kernel lock (flock) on a file inside the
// folder. The kernel drops it when the process ends, even by kill -9, so nothing is ever stale,
// and a copy of the lock file (a backup restored, an S3 sync) locks nothing.
#pragma once
#include <ostream>
#include <string>

namespace titan {

class FolderLock {
 public:
  // Creates `folder` if needed and locks it for this process. Another live owner: UserError
  // naming the folder, the config key that chose it and the owner (pid, host). A filesystem
  // without locks (some network mounts): one warning on `log`, and the run goes on unlocked.
  FolderLock(const std::string& folder, const std::string& key, std::ostream& log);
  ~FolderLock();
  FolderLock(const FolderLock&) = delete;
  FolderLock& operator=(const FolderLock&) = delete;

  static constexpr const char* kFileName = ".titan-run.lock";

 private:
  int fd_ = -1;
};

}  // namespace titan
