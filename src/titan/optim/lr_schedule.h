// Learning-rate factor per optimizer step: torchtitan's linear warmup, then (warmup-stable-decay,
// torchtitan's later [lr_scheduler]) the peak held until the decay's last steps, then linear,
// square-root or cosine decay to lr_min. Without decay_steps the decay starts after warmup.
#pragma once
#include <cstdint>

namespace titan::optim {

enum class DecayKind { linear, cosine, sqrt };

struct LrSchedule {
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;
  DecayKind decay = DecayKind::linear;
  int64_t decay_steps = -1;  // -1: every step after warmup decays
  double lr_min = 0;         // the factor the decay ends at
  // Multiplier of the base lr at 0-based optimizer step s.
  double factor(int64_t s) const;
};

}  // namespace titan::optim
