// Learning-rate factor per optimizer step: torchtitan's linear warmup then linear decay to 0,
// or warmup then cosine decay to 0.
#pragma once
#include <cstdint>

namespace titan::optim {

enum class DecayKind { linear, cosine };

struct LrSchedule {
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;
  DecayKind decay = DecayKind::linear;
  // Multiplier of the base lr at 0-based optimizer step s.
  double factor(int64_t s) const;
};

}  // namespace titan::optim
