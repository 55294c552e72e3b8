#include <cmath>

#include "titan/ops/ops.h"

namespace titan::cpu {

void rope_tables(float* cos, float* sin, int64_t seq, int64_t head_dim, double theta) {
  int64_t half = head_dim / 2;
  for (int64_t i = 0; i < half; ++i) {
    // Frequencies in fp32 as torchtitan computes them; the angle itself in double.
    float freq = 1.0f / static_cast<float>(std::pow(theta, static_cast<double>(2 * i) / head_dim));
    for (int64_t t = 0; t < seq; ++t) {
      double angle = static_cast<double>(t) * freq;
      cos[t * half + i] = static_cast<float>(std::cos(angle));
      sin[t * half + i] = static_cast<float>(std::sin(angle));
    }
  }
}

namespace {
// Rotates each adjacent pair by +angle (sign = 1) or -angle (sign = -1).
void rotate(float* x, const float* cos, const float* sin, int64_t batch, int64_t seq, int64_t heads,
            int64_t head_dim, float sign) {
  int64_t half = head_dim / 2;
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < batch * seq; ++row) {
    int64_t t = row % seq;
    const float* c = cos + t * half;
    const float* s = sin + t * half;
    for (int64_t h = 0; h < heads; ++h) {
      float* xh = x + (row * heads + h) * head_dim;
      for (int64_t i = 0; i < half; ++i) {
        float x0 = xh[2 * i], x1 = xh[2 * i + 1];
        float si = sign * s[i];
        xh[2 * i] = x0 * c[i] - x1 * si;
        xh[2 * i + 1] = x0 * si + x1 * c[i];
      }
    }
  }
}
}  // namespace

void rope_forward(float* x, const float* cos, const float* sin, int64_t batch, int64_t seq,
                  int64_t heads, int64_t head_dim) {
  rotate(x, cos, sin, batch, seq, heads, head_dim, 1.0f);
}

void rope_backward(float* dx, const float* cos, const float* sin, int64_t batch, int64_t seq,
                   int64_t heads, int64_t head_dim) {
  rotate(dx, cos, sin, batch, seq, heads, head_dim, -1.0f);
}

}  // namespace titan::cpu
