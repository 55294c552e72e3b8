#include "titan/optim/lr_schedule.h"

#include <algorithm>
#include <cmath>

namespace titan::optim {

double LrSchedule::factor(int64_t s) const {
  const double w = static_cast<double>(warmup_steps);
  if (s < warmup_steps) return (static_cast<double>(s) + 1.0) / (w + 1.0);
  const double progress = static_cast<double>(s - warmup_steps) / static_cast<double>(std::max<int64_t>(1, total_steps - warmup_steps));
  if (decay == DecayKind::cosine) return 0.5 * (1.0 + std::cos(M_PI * std::min(1.0, progress)));
  return std::max(0.0, 1.0 - progress);
}

}  // namespace titan::optim
