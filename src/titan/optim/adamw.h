// AdamW (decoupled weight decay, bias correction) on each parameter's fp32 shard, with the
// same operation order as torch.optim.AdamW (foreach=False).
#pragma once
#include <cstdint>
#include <deque>

#include "titan/core/parameter.h"

namespace titan::optim {

struct AdamWConfig {
  double lr = 8e-4;
  double beta1 = 0.9, beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
};

// The scalars of one update, rounded to float as every backend applies them.
struct AdamWFactors {
  float beta1, beta2, eps;
  float step_size;              // lr / (1 - beta1^t)
  float bias_correction2_sqrt;  // sqrt(1 - beta2^t)
  float decay;                  // 1 - lr * weight_decay
};

class AdamW {
 public:
  explicit AdamW(AdamWConfig cfg) : cfg_(cfg) {}
  // One update with learning rate `lr` (the schedule's value for this step).
  void step(std::deque<Parameter>& params, double lr);
  // Counts one more step and returns its factors (for backends that apply them elsewhere).
  AdamWFactors advance(double lr);
  int64_t steps_taken() const { return step_; }
  void set_steps_taken(int64_t s) { step_ = s; }
  const AdamWConfig& config() const { return cfg_; }

 private:
  AdamWConfig cfg_;
  int64_t step_ = 0;
};

}  // namespace titan::optim
