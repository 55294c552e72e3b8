#include <algorithm>
#include <cmath>
#include <vector>

#include "titan/ops/ops.h"

namespace titan::cpu {

void rmsnorm_forward(const float* x, const float* w, float* y, float* rstd, int64_t n, int64_t d,
                     float eps) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < n; ++r) {
    const float* xr = x + r * d;
    float ss = 0;
    for (int64_t j = 0; j < d; ++j) ss += xr[j] * xr[j];
    float rs = 1.0f / std::sqrt(ss / static_cast<float>(d) + eps);
    rstd[r] = rs;
    float* yr = y + r * d;
    for (int64_t j = 0; j < d; ++j) yr[j] = xr[j] * rs * w[j];
  }
}

void rmsnorm_backward(const float* x, const float* w, const float* rstd, const float* dy, float* dx,
                      float* dw, int64_t n, int64_t d) {
  // dw is a sum over rows: fixed row chunks, each summed alone, then added in chunk order.
  constexpr int64_t kChunks = 32;
  std::vector<float> partial(kChunks * d, 0.0f);
  int64_t rows_per_chunk = (n + kChunks - 1) / kChunks;
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < kChunks; ++c) {
    float* pw = partial.data() + c * d;
    int64_t end = std::min(n, (c + 1) * rows_per_chunk);
    for (int64_t r = c * rows_per_chunk; r < end; ++r) {
      const float* xr = x + r * d;
      const float* dyr = dy + r * d;
      float rs = rstd[r];
      float dot = 0;  // sum_j dy_j * w_j * xhat_j
      for (int64_t j = 0; j < d; ++j) {
        float xhat = xr[j] * rs;
        dot += dyr[j] * w[j] * xhat;
        pw[j] += dyr[j] * xhat;
      }
      float mean = dot / static_cast<float>(d);
      float* dxr = dx + r * d;
      for (int64_t j = 0; j < d; ++j) dxr[j] = rs * (dyr[j] * w[j] - xr[j] * rs * mean);
    }
  }
  for (int64_t c = 0; c < kChunks; ++c)
    for (int64_t j = 0; j < d; ++j) dw[j] += partial[c * d + j];
}

}  // namespace titan::cpu
