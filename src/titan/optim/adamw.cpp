#include "titan/optim/adamw.h"

#include <cmath>

namespace titan::optim {

AdamWFactors AdamW::advance(double lr) {
  ++step_;
  AdamWFactors f;
  f.beta1 = static_cast<float>(cfg_.beta1);
  f.beta2 = static_cast<float>(cfg_.beta2);
  f.eps = static_cast<float>(cfg_.eps);
  const float bc1 = static_cast<float>(1.0 - std::pow(cfg_.beta1, static_cast<double>(step_)));
  f.bias_correction2_sqrt = static_cast<float>(std::sqrt(1.0 - std::pow(cfg_.beta2, static_cast<double>(step_))));
  f.step_size = static_cast<float>(lr) / bc1;
  f.decay = static_cast<float>(1.0 - lr * cfg_.weight_decay);
  return f;
}

void AdamW::step(std::deque<Parameter>& params, double lr) {
  const AdamWFactors f = advance(lr);
  const float b1 = f.beta1, b2 = f.beta2, bc2_sqrt = f.bias_correction2_sqrt, step_size = f.step_size,
              decay = f.decay, eps = f.eps;
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
