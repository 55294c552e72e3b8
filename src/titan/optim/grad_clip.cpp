#include "titan/optim/grad_clip.h"

#include <algorithm>
#include <vector>

namespace titan::optim {

double grad_sq_sum(const std::deque<Parameter>& params, const std::vector<bool>* skip) {
  // Fixed blocks summed alone, then in block order: independent of the thread count.
  constexpr int64_t kBlock = 1 << 14;
  double total = 0;
  for (size_t k = 0; k < params.size(); ++k) {
    if (skip && (*skip)[k]) continue;
    const Parameter& p = params[k];
    const float* g = p.grad.f32();
    const int64_t n = p.grad.numel(), blocks = (n + kBlock - 1) / kBlock;
    std::vector<double> partial(blocks);
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
      double acc = 0;
      for (int64_t i = b * kBlock; i < std::min(n, (b + 1) * kBlock); ++i) acc += static_cast<double>(g[i]) * g[i];
      partial[b] = acc;
    }
    for (double x : partial) total += x;
  }
  return total;
}

void clip_grads(std::deque<Parameter>& params, double total_norm, double max_norm) {
  if (!(total_norm > max_norm)) return;
  const float coef = static_cast<float>(max_norm / (total_norm + 1e-6));
  for (auto& p : params) {
    float* g = p.grad.f32();
    const int64_t n = p.grad.numel();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) g[i] *= coef;
  }
}

}  // namespace titan::optim
