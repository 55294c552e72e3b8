// Elementwise and gather kernels: RoPE, SwiGLU, residual add, embedding.
#include "titan/ops/cuda/cuda_check.h"
#include "titan/ops/cuda/cuda_ops.h"
#include "titan/ops/cuda/kernel_util.cuh"

namespace titan::cuda {

using namespace detail;

namespace {
constexpr int kThreads = 256;

// One thread per (row, head, pair).
__global__ void rope_kernel(bf16_t* x, const float* cos, const float* sin, int64_t rows, int64_t seq, int64_t heads,
                            int64_t half, float sign) {
  const int64_t total = rows * heads * half;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t pair = i % half, row = i / (half * heads), t = row % seq;
    bf16_t* p = x + 2 * i;  // pairs are contiguous along (row, head, pair)
    const float x0 = to_f(p[0]), x1 = to_f(p[1]);
    const float c = cos[t * half + pair], s = sign * sin[t * half + pair];
    p[0] = to_bf(x0 * c - x1 * s);
    p[1] = to_bf(x0 * s + x1 * c);
  }
}

__global__ void swiglu_forward_kernel(const bf16_t* a, const bf16_t* b, bf16_t* g, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float av = to_f(a[i]), sig = 1.0f / (1.0f + __expf(-av));
    g[i] = to_bf(av * sig * to_f(b[i]));
  }
}

__global__ void swiglu_backward_kernel(const bf16_t* a, const bf16_t* b, const bf16_t* dg, bf16_t* da, bf16_t* db,
                                       int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float av = to_f(a[i]), bv = to_f(b[i]), g = to_f(dg[i]);
    const float sig = 1.0f / (1.0f + __expf(-av));
    db[i] = to_bf(g * av * sig);
    da[i] = to_bf(g * bv * sig * (1.0f + av * (1.0f - sig)));
  }
}

__global__ void add_kernel(const bf16_t* a, const bf16_t* b, bf16_t* y, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[i] = to_bf(to_f(a[i]) + to_f(b[i]));
}

// One block per row.
__global__ void embedding_forward_kernel(const int32_t* tokens, const bf16_t* w, bf16_t* out, int64_t d) {
  const int64_t row = blockIdx.x;
  const bf16_t* src = w + static_cast<int64_t>(tokens[row]) * d;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) out[row * d + j] = src[j];
}

// One block per distinct token; threads over columns; positions summed in order.
__global__ void embedding_backward_kernel(const int32_t* ids, const int32_t* offsets, const int32_t* positions,
                                          const bf16_t* dout, float* dw, int64_t d) {
  const int64_t u = blockIdx.x;
  float* row = dw + static_cast<int64_t>(ids[u]) * d;
  const int32_t begin = offsets[u], end = offsets[u + 1];
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    float acc = row[j];
    for (int32_t p = begin; p < end; ++p) acc += to_f(dout[static_cast<int64_t>(positions[p]) * d + j]);
    row[j] = acc;
  }
}
}  // namespace

void rope(bf16* x, const float* cos, const float* sin, int64_t batch, int64_t seq, int64_t heads, int64_t head_dim,
          bool inverse, cudaStream_t stream) {
  const int64_t half = head_dim / 2, total = batch * seq * heads * half;
  rope_kernel<<<grid_for(total, kThreads), kThreads, 0, stream>>>(as_bf16(x), cos, sin, batch * seq, seq, heads, half,
                                                                  inverse ? -1.0f : 1.0f);
  TITAN_CUDA_CHECK_LAUNCH();
}

void swiglu_forward(const bf16* a, const bf16* b, bf16* g, int64_t count, cudaStream_t stream) {
  swiglu_forward_kernel<<<grid_for(count, kThreads), kThreads, 0, stream>>>(as_bf16(a), as_bf16(b), as_bf16(g), count);
  TITAN_CUDA_CHECK_LAUNCH();
}

void swiglu_backward(const bf16* a, const bf16* b, const bf16* dg, bf16* da, bf16* db, int64_t count,
                     cudaStream_t stream) {
  swiglu_backward_kernel<<<grid_for(count, kThreads), kThreads, 0, stream>>>(as_bf16(a), as_bf16(b), as_bf16(dg),
                                                                             as_bf16(da), as_bf16(db), count);
  TITAN_CUDA_CHECK_LAUNCH();
}

void add(const bf16* a, const bf16* b, bf16* y, int64_t count, cudaStream_t stream) {
  add_kernel<<<grid_for(count, kThreads), kThreads, 0, stream>>>(as_bf16(a), as_bf16(b), as_bf16(y), count);
  TITAN_CUDA_CHECK_LAUNCH();
}

void embedding_forward(const int32_t* tokens, const bf16* w, bf16* out, int64_t n, int64_t d, cudaStream_t stream) {
  if (n == 0) return;
  embedding_forward_kernel<<<static_cast<unsigned>(n), 128, 0, stream>>>(tokens, as_bf16(w), as_bf16(out), d);
  TITAN_CUDA_CHECK_LAUNCH();
}

void embedding_backward(const int32_t* ids, const int32_t* offsets, const int32_t* positions, int64_t unique,
                        const bf16* dout, float* dw, int64_t d, cudaStream_t stream) {
  if (unique == 0) return;
  embedding_backward_kernel<<<static_cast<unsigned>(unique), 128, 0, stream>>>(ids, offsets, positions,
                                                                               as_bf16(dout), dw, d);
  TITAN_CUDA_CHECK_LAUNCH();
}

}  // namespace titan::cuda
