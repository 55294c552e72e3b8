// exp for the attention softmax, written so the compiler vectorizes it. glibc's expf is a
// scalar call (libmvec's vector variant needs -ffast-math); measured on the 2-core CI machine
// it took 7% of a debug-model step. Accuracy: about 2 ulp on [-87, 88] (checked in test_ops).
#pragma once
#include <cstdint>
#include <cstring>

namespace titan::cpu {

inline float exp_approx(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  // x = n ln2 + r, |r| <= ln2 / 2; ln2 split in two for an exact n * ln2_hi.
  // Round to nearest by adding and removing 1.5 * 2^23 (vectorizes, unlike roundf).
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  // Cephes' minimax polynomial for e^r on that interval.
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;  // 2^n
  float scale;
  std::memcpy(&scale, &bits, 4);
  return p * scale;
}

}  // namespace titan::cpu
