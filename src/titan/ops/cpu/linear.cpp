#include "titan/ops/cpu/gemm.h"
#include "titan/ops/ops.h"

namespace titan::cpu {

void linear_forward(const float* x, const float* w, float* y, int64_t n, int64_t in, int64_t out) {
  gemm(false, true, n, out, in, 1.0f, x, in, w, in, 0.0f, y, out);
}

void linear_backward(const float* x, const float* w, const float* dy, float* dx, float* dw,
                     int64_t n, int64_t in, int64_t out, float dx_beta) {
  if (dx) gemm(false, false, n, in, out, 1.0f, dy, out, w, in, dx_beta, dx, in);
  if (dw) gemm(true, false, out, in, n, 1.0f, dy, out, x, in, 1.0f, dw, in);
}

}  // namespace titan::cpu
