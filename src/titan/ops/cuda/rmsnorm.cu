// RMSNorm forward (plain and fused with the residual add) and backward.
#include <initializer_list>

#include "titan/ops/cuda/cuda_check.h"
#include "titan/ops/cuda/cuda_ops.h"
#include "titan/ops/cuda/reduction_sizes.h"
#include "titan/ops/cuda/kernel_util.cuh"

namespace titan::cuda {

using namespace detail;

namespace {
constexpr int kThreads = 256;
constexpr int64_t kRowsPerChunk = kRmsnormRowsPerChunk;

int64_t chunks(int64_t n) { return (n + kRowsPerChunk - 1) / kRowsPerChunk; }

// One block per row. With r != nullptr the input is x + r, rounded to bf16 and stored in h.
__global__ void rmsnorm_forward_kernel(const bf16_t* x, const bf16_t* r, bf16_t* h, const bf16_t* w, bf16_t* y,
                                       float* rstd, int64_t d, float eps) {
  __shared__ float red[32];
  const int64_t row = blockIdx.x;
  const bf16_t* xr = x + row * d;
  float ss = 0;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    float v = to_f(xr[j]);
    if (r) {
      const bf16_t hv = to_bf(v + to_f(r[row * d + j]));
      h[row * d + j] = hv;
      v = to_f(hv);
    }
    ss += v * v;
  }
  ss = block_sum(ss, red);
  const float rs = rsqrtf(ss / static_cast<float>(d) + eps);
  if (threadIdx.x == 0) rstd[row] = rs;
  const bf16_t* src = r ? h + row * d : xr;  // each thread re-reads only what it wrote itself
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) y[row * d + j] = to_bf(to_f(src[j]) * rs * to_f(w[j]));
}

// Eight bf16 per 16-byte access, for rows whose length is a multiple of 8.
struct Vec8 {
  float v[8];
};
__device__ __forceinline__ Vec8 load8(const bf16_t* p) {
  const uint4 u = *reinterpret_cast<const uint4*>(p);
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&u);
  Vec8 out;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = __bfloat1622float2(h[i]);
    out.v[2 * i] = f.x;
    out.v[2 * i + 1] = f.y;
  }
  return out;
}
__device__ __forceinline__ void store8(bf16_t* p, const Vec8& x) {
  uint4 u;
  __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&u);
#pragma unroll
  for (int i = 0; i < 4; ++i) h[i] = __floats2bfloat162_rn(x.v[2 * i], x.v[2 * i + 1]);
  *reinterpret_cast<uint4*>(p) = u;
}

// rmsnorm_forward_kernel for d % 8 == 0, eight elements per access.
__global__ void rmsnorm_forward_vec_kernel(const bf16_t* x, const bf16_t* r, bf16_t* h, const bf16_t* w, bf16_t* y,
                                           float* rstd, int64_t d, float eps) {
  __shared__ float red[32];
  const int64_t row = blockIdx.x;
  float ss = 0;
  for (int64_t j = 8 * threadIdx.x; j < d; j += 8 * blockDim.x) {
    Vec8 v = load8(x + row * d + j);
    if (r) {
      const Vec8 rv = load8(r + row * d + j);
#pragma unroll
      for (int i = 0; i < 8; ++i) v.v[i] += rv.v[i];
      store8(h + row * d + j, v);
      v = load8(h + row * d + j);  // the rounded sum, as the next layer will see it
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) ss += v.v[i] * v.v[i];
  }
  ss = block_sum(ss, red);
  const float rs = rsqrtf(ss / static_cast<float>(d) + eps);
  if (threadIdx.x == 0) rstd[row] = rs;
  const bf16_t* src = r ? h : x;
  for (int64_t j = 8 * threadIdx.x; j < d; j += 8 * blockDim.x) {
    Vec8 v = load8(src + row * d + j);
    const Vec8 wv = load8(w + j);
#pragma unroll
    for (int i = 0; i < 8; ++i) v.v[i] = v.v[i] * rs * wv.v[i];
    store8(y + row * d + j, v);
  }
}

// rmsnorm_backward_dx_kernel for d % 8 == 0.
__global__ void rmsnorm_backward_dx_vec_kernel(const bf16_t* x, const bf16_t* w, const float* rstd, const bf16_t* dy,
                                               bf16_t* dx, bool accumulate, int64_t d) {
  __shared__ float red[32];
  const int64_t row = blockIdx.x;
  const float rs = rstd[row];
  float dot = 0;
  for (int64_t j = 8 * threadIdx.x; j < d; j += 8 * blockDim.x) {
    const Vec8 g = load8(dy + row * d + j), wv = load8(w + j), xv = load8(x + row * d + j);
#pragma unroll
    for (int i = 0; i < 8; ++i) dot += g.v[i] * wv.v[i] * xv.v[i] * rs;
  }
  const float mean = block_sum(dot, red) / static_cast<float>(d);
  for (int64_t j = 8 * threadIdx.x; j < d; j += 8 * blockDim.x) {
    const Vec8 g = load8(dy + row * d + j), wv = load8(w + j), xv = load8(x + row * d + j);
    Vec8 out{};
    if (accumulate) out = load8(dx + row * d + j);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const float v = rs * (g.v[i] * wv.v[i] - xv.v[i] * rs * mean);
      out.v[i] = accumulate ? out.v[i] + v : v;
    }
    store8(dx + row * d + j, out);
  }
}

bool vec_ok(int64_t d, std::initializer_list<const void*> ptrs) {
  if (d % 8 != 0) return false;
  for (const void* p : ptrs)
    if (p && reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return true;
}

// Threads for one row of d elements, eight per thread per access: a multiple of 32, at most 256.
unsigned vec_threads(int64_t d) {
  const int64_t t = (d / 8 + 31) / 32 * 32;
  return static_cast<unsigned>(t < 32 ? 32 : (t > kThreads ? kThreads : t));
}

// One block per row: dx = rstd * (dy*w - xhat * mean(dy*w*xhat)).
__global__ void rmsnorm_backward_dx_kernel(const bf16_t* x, const bf16_t* w, const float* rstd, const bf16_t* dy,
                                           bf16_t* dx, bool accumulate, int64_t d) {
  __shared__ float red[32];
  const int64_t row = blockIdx.x;
  const float rs = rstd[row];
  float dot = 0;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x)
    dot += to_f(dy[row * d + j]) * to_f(w[j]) * to_f(x[row * d + j]) * rs;
  const float mean = block_sum(dot, red) / static_cast<float>(d);
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    const int64_t i = row * d + j;
    float g = rs * (to_f(dy[i]) * to_f(w[j]) - to_f(x[i]) * rs * mean);
    if (accumulate) g += to_f(dx[i]);
    dx[i] = to_bf(g);
  }
}

// partial[c, j] = sum over rows of chunk c of dy * xhat; grid (column blocks, chunks).
__global__ void rmsnorm_dw_partial_kernel(const bf16_t* x, const float* rstd, const bf16_t* dy, float* partial,
                                          int64_t n, int64_t d) {
  const int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x, c = blockIdx.y;
  if (j >= d) return;
  const int64_t end = min(n, (c + 1) * kRowsPerChunk);
  float acc = 0;
  for (int64_t r = c * kRowsPerChunk; r < end; ++r) acc += to_f(dy[r * d + j]) * to_f(x[r * d + j]) * rstd[r];
  partial[c * d + j] = acc;
}

__global__ void rmsnorm_dw_reduce_kernel(const float* partial, float* dw, int64_t chunks, int64_t d) {
  const int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (j >= d) return;
  float acc = 0;
  for (int64_t c = 0; c < chunks; ++c) acc += partial[c * d + j];
  dw[j] += acc;
}
}  // namespace

void rmsnorm_forward(const bf16* x, const bf16* w, bf16* y, float* rstd, int64_t n, int64_t d, float eps,
                     cudaStream_t stream) {
  if (n == 0) return;
  if (vec_ok(d, {x, w, y})) {
    rmsnorm_forward_vec_kernel<<<static_cast<unsigned>(n), vec_threads(d), 0, stream>>>(
        as_bf16(x), nullptr, nullptr, as_bf16(w), as_bf16(y), rstd, d, eps);
    TITAN_CUDA_CHECK_LAUNCH();
    return;
  }
  rmsnorm_forward_kernel<<<static_cast<unsigned>(n), kThreads, 0, stream>>>(as_bf16(x), nullptr, nullptr, as_bf16(w),
                                                                             as_bf16(y), rstd, d, eps);
  TITAN_CUDA_CHECK_LAUNCH();
}

void add_rmsnorm_forward(const bf16* x, const bf16* r, bf16* h, const bf16* w, bf16* y, float* rstd, int64_t n,
                         int64_t d, float eps, cudaStream_t stream) {
  if (n == 0) return;
  if (vec_ok(d, {x, r, h, w, y})) {
    rmsnorm_forward_vec_kernel<<<static_cast<unsigned>(n), vec_threads(d), 0, stream>>>(
        as_bf16(x), as_bf16(r), as_bf16(h), as_bf16(w), as_bf16(y), rstd, d, eps);
    TITAN_CUDA_CHECK_LAUNCH();
    return;
  }
  rmsnorm_forward_kernel<<<static_cast<unsigned>(n), kThreads, 0, stream>>>(as_bf16(x), as_bf16(r), as_bf16(h),
                                                                             as_bf16(w), as_bf16(y), rstd, d, eps);
  TITAN_CUDA_CHECK_LAUNCH();
}

int64_t rmsnorm_partial_floats(int64_t n, int64_t d) { return chunks(n) * d; }

void rmsnorm_backward(const bf16* x, const bf16* w, const float* rstd, const bf16* dy, bf16* dx, bool accumulate,
                      float* dw, float* partial, int64_t n, int64_t d, cudaStream_t stream) {
  if (n == 0) return;
  if (vec_ok(d, {x, w, dy, dx})) {
    rmsnorm_backward_dx_vec_kernel<<<static_cast<unsigned>(n), vec_threads(d), 0, stream>>>(
        as_bf16(x), as_bf16(w), rstd, as_bf16(dy), as_bf16(dx), accumulate, d);
  } else {
    rmsnorm_backward_dx_kernel<<<static_cast<unsigned>(n), kThreads, 0, stream>>>(as_bf16(x), as_bf16(w), rstd,
                                                                                   as_bf16(dy), as_bf16(dx), accumulate, d);
  }
  TITAN_CUDA_CHECK_LAUNCH();
  const unsigned col_blocks = static_cast<unsigned>((d + kThreads - 1) / kThreads);
  rmsnorm_dw_partial_kernel<<<dim3(col_blocks, static_cast<unsigned>(chunks(n))), kThreads, 0, stream>>>(
      as_bf16(x), rstd, as_bf16(dy), partial, n, d);
  TITAN_CUDA_CHECK_LAUNCH();
  rmsnorm_dw_reduce_kernel<<<col_blocks, kThreads, 0, stream>>>(partial, dw, chunks(n), d);
  TITAN_CUDA_CHECK_LAUNCH();
}

}  // namespace titan::cuda
