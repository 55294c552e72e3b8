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
__device__ __forceinline__ void adamw_one(float& w, float g, float& m, float& v, const AdamWStep& s) {
  const float gi = g * s.grad_coef;
  const float wi = w * s.decay;
  m = m * s.beta1 + gi * (1.0f - s.beta1);
  v = v * s.beta2 + gi * gi * (1.0f - s.beta2);
  const float denom = sqrtf(v) / s.bias_correction2_sqrt + s.eps;
  w = wi - s.step_size * m / denom;
}

// Where a kernel takes the step's factors from: a value, or device memory plus the clipping
// and finiteness decision made on the device.
struct StepSource {
  AdamWStep value;
  const AdamWStep* device = nullptr;
  const double* grad_sq_sum = nullptr;
  const double* loss_sum = nullptr;
  double max_norm = 0;
};

// False when this step's update is to be skipped (non-finite loss or gradient norm).
__device__ __forceinline__ bool resolve(const StepSource& src, AdamWStep& s) {
  if (!src.device) {
    s = src.value;
    return true;
  }
  s = *src.device;
  const double norm = sqrt(*src.grad_sq_sum);
  if (!isfinite(*src.loss_sum) || !isfinite(norm)) return false;
  s.grad_coef = src.max_norm > 0 && norm > src.max_norm ? static_cast<float>(src.max_norm / (norm + 1e-6)) : 1.0f;
  return true;
}

// Four elements per thread through 16-byte loads (the flat buffers are 256-byte aligned).
__global__ void adamw_vec_kernel(float4* w, const float4* g, float4* m, float4* v, __nv_bfloat162* w_bf16, int64_t n4,
                                 StepSource src) {
  AdamWStep s;
  if (!resolve(src, s)) return;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n4;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float4 wi = w[i], mi = m[i], vi = v[i];
    const float4 gi = g[i];
    adamw_one(wi.x, gi.x, mi.x, vi.x, s);
    adamw_one(wi.y, gi.y, mi.y, vi.y, s);
    adamw_one(wi.z, gi.z, mi.z, vi.z, s);
    adamw_one(wi.w, gi.w, mi.w, vi.w, s);
    w[i] = wi;
    m[i] = mi;
    v[i] = vi;
    w_bf16[2 * i] = __floats2bfloat162_rn(wi.x, wi.y);
    w_bf16[2 * i + 1] = __floats2bfloat162_rn(wi.z, wi.w);
  }
}

__global__ void adamw_kernel(float* w, const float* g, float* m, float* v, bf16_t* w_bf16, int64_t begin, int64_t n,
                             StepSource src) {
  AdamWStep s;
  if (!resolve(src, s)) return;
  for (int64_t i = begin + blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float wi = w[i], mi = m[i], vi = v[i];
    adamw_one(wi, g[i], mi, vi, s);
    w[i] = wi;
    m[i] = mi;
    v[i] = vi;
    w_bf16[i] = to_bf(wi);
  }
}
}  // namespace

namespace {
void launch(float* w, const float* g, float* m, float* v, bf16* w_bf16, int64_t n, const StepSource& src,
            cudaStream_t stream) {
  const bool vec = reinterpret_cast<uintptr_t>(w) % 16 == 0 && reinterpret_cast<uintptr_t>(g) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(m) % 16 == 0 && reinterpret_cast<uintptr_t>(v) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(w_bf16) % 8 == 0;
  const int64_t n4 = vec ? n / 4 : 0;
  if (n4 > 0) {
    adamw_vec_kernel<<<grid_for(n4, kThreads), kThreads, 0, stream>>>(
        reinterpret_cast<float4*>(w), reinterpret_cast<const float4*>(g), reinterpret_cast<float4*>(m),
        reinterpret_cast<float4*>(v), reinterpret_cast<__nv_bfloat162*>(w_bf16), n4, src);
    TITAN_CUDA_CHECK_LAUNCH();
  }
  if (4 * n4 < n) {
    adamw_kernel<<<grid_for(n - 4 * n4, kThreads), kThreads, 0, stream>>>(w, g, m, v, as_bf16(w_bf16), 4 * n4, n, src);
    TITAN_CUDA_CHECK_LAUNCH();
  }
}
}  // namespace

void adamw(float* w, const float* g, float* m, float* v, bf16* w_bf16, int64_t n, const AdamWStep& step,
           cudaStream_t stream) {
  StepSource src;
  src.value = step;
  launch(w, g, m, v, w_bf16, n, src, stream);
}

void adamw_device_step(float* w, const float* g, float* m, float* v, bf16* w_bf16, int64_t n, const AdamWStep* step,
                       const double* grad_sq_sum, const double* loss_sum, double max_norm, cudaStream_t stream) {
  StepSource src;
  src.value = {};
  src.device = step;
  src.grad_sq_sum = grad_sq_sum;
  src.loss_sum = loss_sum;
  src.max_norm = max_norm;
  launch(w, g, m, v, w_bf16, n, src, stream);
}

}  // namespace titan::cuda
