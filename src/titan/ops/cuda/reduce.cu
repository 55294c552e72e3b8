// Deterministic full reductions: a fixed grid writes per-block partial sums, one block adds
// them in order. No atomics, so the result never depends on scheduling.
#include "titan/ops/cuda/cuda_check.h"
#include "titan/ops/cuda/cuda_ops.h"
#include "titan/ops/cuda/kernel_util.cuh"

namespace titan::cuda {

using namespace detail;

namespace {
constexpr int kBlocks = 264, kThreads = 256;  // two blocks per H100/H200 multiprocessor

__device__ double block_sum_double(double v) {
  __shared__ double red[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_sum(v);
  if (lane == 0) red[warp] = v;
  __syncthreads();
  v = lane < warps ? red[lane] : 0.0;
  return warp_sum(v);
}

template <bool kSquare>
__global__ void partial_sum_kernel(const float* x, int64_t n, double* partial) {
  double acc = 0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const double v = x[i];
    acc += kSquare ? v * v : v;
  }
  acc = block_sum_double(acc);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

__global__ void final_sum_kernel(const double* partial, int count, double* out) {
  double acc = 0;
  for (int i = threadIdx.x; i < count; i += blockDim.x) acc += partial[i];
  acc = block_sum_double(acc);
  if (threadIdx.x == 0) *out = acc;
}

template <bool kSquare>
void reduce(const float* x, int64_t n, double* out, double* scratch, cudaStream_t stream) {
  partial_sum_kernel<kSquare><<<kBlocks, kThreads, 0, stream>>>(x, n, scratch);
  TITAN_CUDA_CHECK_LAUNCH();
  final_sum_kernel<<<1, kThreads, 0, stream>>>(scratch, kBlocks, out);
  TITAN_CUDA_CHECK_LAUNCH();
}
}  // namespace

int64_t reduce_scratch_doubles() { return kBlocks; }

void sum_f32(const float* x, int64_t n, double* out, double* scratch, cudaStream_t stream) {
  reduce<false>(x, n, out, scratch, stream);
}

void sum_squares_f32(const float* x, int64_t n, double* out, double* scratch, cudaStream_t stream) {
  reduce<true>(x, n, out, scratch, stream);
}

}  // namespace titan::cuda
