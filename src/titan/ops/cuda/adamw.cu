// AdamW over the flat fp32 parameter buffers in one launch, with clipping folded in and the
// bf16 compute weights written in the same pass.
#include "titan/ops/cuda/cuda_check.h"
#include "titan/ops/cuda/cuda_ops.h"
#include "titan/ops/cuda/kernel_util.cuh"

namespace titan::cuda {

using namespace detail;

namespace {
constexpr int kThreads = 256;

// Same operation order as titan::optim::AdamW, so the CPU and GPU updates agree to rounding.
__global__ void adamw_kernel(float* w, const float* g, float* m, float* v, bf16_t* w_bf16, int64_t n, AdamWStep s) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float gi = g[i] * s.grad_coef;
    float wi = w[i] * s.decay;
    const float mi = m[i] * s.beta1 + gi * (1.0f - s.beta1);
    const float vi = v[i] * s.beta2 + gi * gi * (1.0f - s.beta2);
    const float denom = sqrtf(vi) / s.bias_correction2_sqrt + s.eps;
    wi -= s.step_size * mi / denom;
    w[i] = wi;
    m[i] = mi;
    v[i] = vi;
    w_bf16[i] = to_bf(wi);
  }
}
}  // namespace

void adamw(float* w, const float* g, float* m, float* v, bf16* w_bf16, int64_t n, const AdamWStep& step,
           cudaStream_t stream) {
  adamw_kernel<<<grid_for(n, kThreads), kThreads, 0, stream>>>(w, g, m, v, as_bf16(w_bf16), n, step);
  TITAN_CUDA_CHECK_LAUNCH();
}

}  // namespace titan::cuda
