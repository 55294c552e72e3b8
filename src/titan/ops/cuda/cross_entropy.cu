// Softmax cross-entropy over rows of fp32 logits, with the logits' gradient in bf16: the
// middle of the fused classifier (the GEMMs around it are in models/llama3/cuda_model.cpp).
#include "titan/ops/cuda/cuda_check.h"
#include "titan/ops/cuda/cuda_ops.h"
#include "titan/ops/cuda/kernel_util.cuh"

namespace titan::cuda {

using namespace detail;

namespace {
constexpr int kThreads = 512;

// One block per row: one pass for an online (max, sum of exp), one for the gradient.
__global__ void cross_entropy_kernel(const float* logits, const int32_t* labels, int64_t vocab, int32_t ignore_index,
                                     float grad_scale, float* loss, bf16_t* dlogits) {
  __shared__ float red[32];
  const int64_t row = blockIdx.x;
  const float* z = logits + row * vocab;
  const int32_t label = labels[row];
  float m = -INFINITY, s = 0;
  for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) {
    const float v = z[j];
    if (v > m) {
      s = s * __expf(m - v) + 1.0f;
      m = v;
    } else {
      s += __expf(v - m);
    }
  }
  const float mx = block_max(m, red);
  const float total = block_sum(m == -INFINITY ? 0.0f : s * __expf(m - mx), red);
  const float lse = mx + __logf(total);
  const bool ignored = label == ignore_index;
  if (threadIdx.x == 0) loss[row] = ignored ? 0.0f : lse - z[label];
  if (!dlogits) return;
  bf16_t* dz = dlogits + row * vocab;
  for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) {
    float g = ignored ? 0.0f : __expf(z[j] - lse) * grad_scale;
    if (j == label) g -= grad_scale;
    dz[j] = to_bf(g);
  }
}
}  // namespace

void cross_entropy_rows(const float* logits, const int32_t* labels, int64_t rows, int64_t vocab,
                        int32_t ignore_index, float grad_scale, float* loss, bf16* dlogits, cudaStream_t stream) {
  if (rows == 0) return;
  cross_entropy_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(logits, labels, vocab, ignore_index,
                                                                             grad_scale, loss, as_bf16(dlogits));
  TITAN_CUDA_CHECK_LAUNCH();
}

}  // namespace titan::cuda
