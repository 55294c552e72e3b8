#include "titan/metrics/memory.h"

#include <malloc.h>
#include <sys/resource.h>
#include <unistd.h>

namespace titan::metrics {

MemorySample sample_host_memory() {
  constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
  const struct mallinfo2 mi = mallinfo2();
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  MemorySample s;
  s.active_gib = static_cast<double>(mi.uordblks + mi.hblkhd) / kGiB;  // heap in use + large mmapped blocks
  s.reserved_gib = static_cast<double>(u.ru_maxrss) * 1024.0 / kGiB;
  s.total_gib = static_cast<double>(sysconf(_SC_PHYS_PAGES)) * static_cast<double>(sysconf(_SC_PAGE_SIZE)) / kGiB;
  return s;
}

}  // namespace titan::metrics
