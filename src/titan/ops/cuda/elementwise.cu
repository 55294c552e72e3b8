// Elementwise and gather kernels: RoPE, SwiGLU, residual add, embedding.
#include "titan/ops/cuda/cuda_check.h"
#include "titan/ops/cuda/cuda_ops.h"
#include "titan/ops/cuda/kernel_util.cuh"

namespace titan::cuda {

using namespace detail;

namespace {
constexpr int kThreads = 256;

// One block per row (token); its threads walk the (head, pair) grid, one 4-byte pair each.
__global__ void rope_kernel(bf16_t* x, const float* cos, const float* sin, int64_t seq, int heads, int half,
                            float sign) {
  const int64_t row = blockIdx.x, t = row % seq;
  __nv_bfloat162* xr = reinterpret_cast<__nv_bfloat162*>(x) + row * heads * half;
  for (int i = threadIdx.x; i < heads * half; i += blockDim.x) {
    const int pair = i % half;
    const float2 v = __bfloat1622float2(xr[i]);
    const float c = cos[t * half + pair], s = sign * sin[t * half + pair];
    xr[i] = __floats2bfloat162_rn(v.x * c - v.y * s, v.x * s + v.y * c);
  }
}

// Eight bf16 at a time through one 16-byte load; the scalar kernels take what does not fit.
struct Bf16x8 {
  __nv_bfloat162 h[4];
};
__device__ __forceinline__ void unpack8(const uint4& u, float (&f)[8]) {
  const Bf16x8 v = *reinterpret_cast<const Bf16x8*>(&u);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 p = __bfloat1622float2(v.h[i]);
    f[2 * i] = p.x;
    f[2 * i + 1] = p.y;
  }
}
__device__ __forceinline__ uint4 pack8(const float (&f)[8]) {
  Bf16x8 v;
#pragma unroll
  for (int i = 0; i < 4; ++i) v.h[i] = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
  return *reinterpret_cast<const uint4*>(&v);
}

__global__ void swiglu_forward_vec_kernel(const uint4* a, const uint4* b, uint4* g, int64_t n8) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n8;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float av[8], bv[8], out[8];
    unpack8(a[i], av);
    unpack8(b[i], bv);
#pragma unroll
    for (int j = 0; j < 8; ++j) out[j] = av[j] / (1.0f + __expf(-av[j])) * bv[j];
    g[i] = pack8(out);
  }
}

__global__ void swiglu_backward_vec_kernel(const uint4* a, const uint4* b, const uint4* dg, uint4* da, uint4* db,
                                           int64_t n8) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n8;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float av[8], bv[8], gv[8], oa[8], ob[8];
    unpack8(a[i], av);
    unpack8(b[i], bv);
    unpack8(dg[i], gv);
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const float sig = 1.0f / (1.0f + __expf(-av[j]));
      ob[j] = gv[j] * av[j] * sig;
      oa[j] = gv[j] * bv[j] * sig * (1.0f + av[j] * (1.0f - sig));
    }
    da[i] = pack8(oa);
    db[i] = pack8(ob);
  }
}

__global__ void add_vec_kernel(const uint4* a, const uint4* b, uint4* y, int64_t n8) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n8;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float av[8], bv[8];
    unpack8(a[i], av);
    unpack8(b[i], bv);
#pragma unroll
    for (int j = 0; j < 8; ++j) av[j] += bv[j];
    y[i] = pack8(av);
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

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

__global__ void accumulate_f32_kernel(float* dst, const float* src, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dst[i] += src[i];
}

// One block per row; w holds the table's rows [first, first + rows): other tokens get zeros.
__global__ void embedding_forward_kernel(const int32_t* tokens, const bf16_t* w, bf16_t* out, int64_t d, int64_t first,
                                         int64_t rows) {
  const int64_t row = blockIdx.x, id = static_cast<int64_t>(tokens[row]) - first;
  if (id < 0 || id >= rows) {
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) out[row * d + j] = to_bf(0.0f);
    return;
  }
  const bf16_t* src = w + id * d;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) out[row * d + j] = src[j];
}

// One block per distinct token; threads over columns; positions summed in order. dw holds the
// rows [first, first + rows) of the table's gradient: other tokens' groups do nothing.
__global__ void embedding_backward_kernel(const int32_t* ids, const int32_t* offsets, const int32_t* positions,
                                          const bf16_t* dout, float* dw, int64_t d, int64_t first, int64_t rows) {
  const int64_t u = blockIdx.x, id = static_cast<int64_t>(ids[u]) - first;
  const int32_t begin = offsets[u], end = offsets[u + 1];
  if (begin == end || id < 0 || id >= rows) return;  // padding, or another rank's slice
  float* row = dw + id * d;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    float acc = row[j];
    for (int32_t p = begin; p < end; ++p) acc += to_f(dout[static_cast<int64_t>(positions[p]) * d + j]);
    row[j] = acc;
  }
}
}  // namespace

void rope(bf16* x, const float* cos, const float* sin, int64_t batch, int64_t seq, int64_t heads, int64_t head_dim,
          bool inverse, cudaStream_t stream) {
  if (batch * seq == 0) return;
  const int pairs = static_cast<int>(heads * head_dim / 2), threads = pairs < kThreads ? (pairs + 31) / 32 * 32 : kThreads;
  rope_kernel<<<static_cast<unsigned>(batch * seq), threads, 0, stream>>>(
      as_bf16(x), cos, sin, seq, static_cast<int>(heads), static_cast<int>(head_dim / 2), inverse ? -1.0f : 1.0f);
  TITAN_CUDA_CHECK_LAUNCH();
}

void swiglu_forward(const bf16* a, const bf16* b, bf16* g, int64_t count, cudaStream_t stream) {
  if (count % 8 == 0 && aligned16(a) && aligned16(b) && aligned16(g)) {
    swiglu_forward_vec_kernel<<<grid_for(count / 8, kThreads), kThreads, 0, stream>>>(
        reinterpret_cast<const uint4*>(a), reinterpret_cast<const uint4*>(b), reinterpret_cast<uint4*>(g), count / 8);
    TITAN_CUDA_CHECK_LAUNCH();
    return;
  }
  swiglu_forward_kernel<<<grid_for(count, kThreads), kThreads, 0, stream>>>(as_bf16(a), as_bf16(b), as_bf16(g), count);
  TITAN_CUDA_CHECK_LAUNCH();
}

void swiglu_backward(const bf16* a, const bf16* b, const bf16* dg, bf16* da, bf16* db, int64_t count,
                     cudaStream_t stream) {
  if (count % 8 == 0 && aligned16(a) && aligned16(b) && aligned16(dg) && aligned16(da) && aligned16(db)) {
    swiglu_backward_vec_kernel<<<grid_for(count / 8, kThreads), kThreads, 0, stream>>>(
        reinterpret_cast<const uint4*>(a), reinterpret_cast<const uint4*>(b), reinterpret_cast<const uint4*>(dg),
        reinterpret_cast<uint4*>(da), reinterpret_cast<uint4*>(db), count / 8);
    TITAN_CUDA_CHECK_LAUNCH();
    return;
  }
  swiglu_backward_kernel<<<grid_for(count, kThreads), kThreads, 0, stream>>>(as_bf16(a), as_bf16(b), as_bf16(dg),
                                                                             as_bf16(da), as_bf16(db), count);
  TITAN_CUDA_CHECK_LAUNCH();
}

void add(const bf16* a, const bf16* b, bf16* y, int64_t count, cudaStream_t stream) {
  if (count % 8 == 0 && aligned16(a) && aligned16(b) && aligned16(y)) {
    add_vec_kernel<<<grid_for(count / 8, kThreads), kThreads, 0, stream>>>(
        reinterpret_cast<const uint4*>(a), reinterpret_cast<const uint4*>(b), reinterpret_cast<uint4*>(y), count / 8);
    TITAN_CUDA_CHECK_LAUNCH();
    return;
  }
  add_kernel<<<grid_for(count, kThreads), kThreads, 0, stream>>>(as_bf16(a), as_bf16(b), as_bf16(y), count);
  TITAN_CUDA_CHECK_LAUNCH();
}

void accumulate_f32(float* dst, const float* src, int64_t count, cudaStream_t stream) {
  if (count == 0) return;
  accumulate_f32_kernel<<<grid_for(count, kThreads), kThreads, 0, stream>>>(dst, src, count);
  TITAN_CUDA_CHECK_LAUNCH();
}

void embedding_forward(const int32_t* tokens, const bf16* w, bf16* out, int64_t n, int64_t d, cudaStream_t stream,
                       int64_t first, int64_t rows) {
  if (n == 0) return;
  embedding_forward_kernel<<<static_cast<unsigned>(n), 128, 0, stream>>>(tokens, as_bf16(w), as_bf16(out), d, first,
                                                                          rows);
  TITAN_CUDA_CHECK_LAUNCH();
}

void embedding_backward(const int32_t* ids, const int32_t* offsets, const int32_t* positions, int64_t unique,
                        const bf16* dout, float* dw, int64_t d, cudaStream_t stream, int64_t first, int64_t rows) {
  if (unique == 0) return;
  embedding_backward_kernel<<<static_cast<unsigned>(unique), 128, 0, stream>>>(ids, offsets, positions,
                                                                               as_bf16(dout), dw, d, first, rows);
  TITAN_CUDA_CHECK_LAUNCH();
}

}  // namespace titan::cuda
