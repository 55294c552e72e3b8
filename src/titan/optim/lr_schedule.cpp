#include "titan/optim/lr_schedule.h"

#include <algorithm>
#include <cmath>

namespace titan::optim {

double LrSchedule::factor(int64_t s) const {
  const double w = static_cast<double>(warmup_steps);
  if (s < warmup_steps) return (static_cast<double>(s) + 1.0) / (w + 1.0);
  // The decay's first step: right after warmup, or decay_steps before the end (WSD).
  const int64_t decaying = decay_steps < 0 ? total_steps - warmup_steps : std::min(decay_steps, total_steps - warmup_steps);
  const int64_t start = total_steps - decaying;
  if (s < start) return 1.0;
  const double progress = std::min(1.0, static_cast<double>(s - start) / static_cast<double>(std::max<int64_t>(1, decaying)));
  double f = 1.0 - progress;
  if (decay == DecayKind::cosine) f = 0.5 * (1.0 + std::cos(M_PI * progress));
  if (decay == DecayKind::sqrt) f = 1.0 - std::sqrt(progress);
  return lr_min + (1.0 - lr_min) * f;
}

}  // namespace titan::optim
