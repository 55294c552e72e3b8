#include "titan/ops/cpu/vec_math.h"
#include "titan/ops/ops.h"

namespace titan::cpu {

void swiglu_forward(const float* a, const float* b, float* g, int64_t count) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < count; ++i) {
    float sig = 1.0f / (1.0f + exp_approx(-a[i]));
    g[i] = a[i] * sig * b[i];
  }
}

void swiglu_backward(const float* a, const float* b, const float* dg, float* da, float* db,
                     int64_t count) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < count; ++i) {
    float sig = 1.0f / (1.0f + exp_approx(-a[i]));
    float silu = a[i] * sig;
    db[i] = dg[i] * silu;
    da[i] = dg[i] * b[i] * sig * (1.0f + a[i] * (1.0f - sig));
  }
}

void add_inplace(float* y, const float* x, int64_t count) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < count; ++i) y[i] += x[i];
}

}  // namespace titan::cpu
