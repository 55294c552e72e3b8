// Host memory figures for the metrics: bytes in use by the allocator (active), the process's
// peak resident size (reserved), and the machine's total, for percentages.
#pragma once
#include <cstdint>

namespace titan::metrics {

struct MemorySample {
  double active_gib = 0, reserved_gib = 0, total_gib = 0;
  int64_t alloc_retries = 0, ooms = 0;  // device allocators only
};
MemorySample sample_host_memory();

}  // namespace titan::metrics
