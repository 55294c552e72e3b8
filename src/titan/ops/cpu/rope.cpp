#include <cmath>

#include "titan/ops/ops.h"

namespace titan::cpu {

namespace {
// The scaled frequency, in float32 as transformers' _compute_llama3_parameters computes it.
float scaled_frequency(float freq, const RopeScaling& s) {
  if (s.factor == 0) return freq;
  const float factor = static_cast<float>(s.factor), low = static_cast<float>(s.low_freq_factor),
              high = static_cast<float>(s.high_freq_factor), old_len = static_cast<float>(s.original_max_positions);
  const float wavelen = 2.0f * static_cast<float>(M_PI) / freq;
  if (wavelen < old_len / high) return freq;            // high frequencies: unchanged
  if (wavelen > old_len / low) return freq / factor;    // low frequencies: slowed by the factor
  const float smooth = (old_len / wavelen - low) / (high - low);
  return (1.0f - smooth) * freq / factor + smooth * freq;  // between: blended
}
}  // namespace

void rope_tables(float* cos, float* sin, int64_t seq, int64_t head_dim, double theta, const RopeScaling& scaling) {
  int64_t half = head_dim / 2;
  for (int64_t i = 0; i < half; ++i) {
    // Frequencies in fp32 as torchtitan computes them; the angle itself in double.
    const float freq =
      scaled_frequency(1.0f / static_cast<float>(std::pow(theta, static_cast<double>(2 * i) / head_dim)), scaling);
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
