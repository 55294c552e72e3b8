#include <cuda_bf16.h>

#include "titan/ops/cuda/cuda_check.h"
#include "titan/ops/cuda/cuda_ops.h"

namespace titan::cuda {

namespace {
constexpr int kThreads = 256;

__global__ void f32_to_bf16_kernel(const float* in, __nv_bfloat16* out, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = __float2bfloat16_rn(in[i]);
}

__global__ void bf16_to_f32_kernel(const __nv_bfloat16* in, float* out, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = __bfloat162float(in[i]);
}

unsigned blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < 65535 * 32 ? (b > 0 ? b : 1) : 65535 * 32);
}
}  // namespace

void cast_f32_to_bf16(const float* in, uint16_t* out, int64_t n, cudaStream_t stream) {
  f32_to_bf16_kernel<<<blocks_for(n), kThreads, 0, stream>>>(in, reinterpret_cast<__nv_bfloat16*>(out), n);
  TITAN_CUDA_CHECK_LAUNCH();
}

void cast_bf16_to_f32(const uint16_t* in, float* out, int64_t n, cudaStream_t stream) {
  bf16_to_f32_kernel<<<blocks_for(n), kThreads, 0, stream>>>(reinterpret_cast<const __nv_bfloat16*>(in), out, n);
  TITAN_CUDA_CHECK_LAUNCH();
}

}  // namespace titan::cuda
