#include "titan/optim/adamw.h"

#include <cmath>

namespace titan::optim {

void AdamW::step(std::deque<Parameter>& params, double lr) {
  ++step_;
  const float b1 = static_cast<float>(cfg_.beta1), b2 = static_cast<float>(cfg_.beta2);
  const float bc1 = static_cast<float>(1.0 - std::pow(cfg_.beta1, static_cast<double>(step_)));
  const float bc2_sqrt = static_cast<float>(std::sqrt(1.0 - std::pow(cfg_.beta2, static_cast<double>(step_))));
  const float step_size = static_cast<float>(lr) / bc1;
  const float decay = static_cast<float>(1.0 - lr * cfg_.weight_decay);
  const float eps = static_cast<float>(cfg_.eps);
  for (auto& p : params) {
    float* w = p.master.f32();
    const float* g = p.grad.f32();
    float* m = p.exp_avg.f32();
    float* v = p.exp_avg_sq.f32();
    const int64_t n = p.master.numel();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      w[i] *= decay;
      m[i] = m[i] * b1 + g[i] * (1.0f - b1);
      v[i] = v[i] * b2 + g[i] * g[i] * (1.0f - b2);
      const float denom = std::sqrt(v[i]) / bc2_sqrt + eps;
      w[i] -= step_size * m[i] / denom;
    }
  }
}

}  // namespace titan::optim
