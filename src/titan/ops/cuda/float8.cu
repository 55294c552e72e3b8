#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include <algorithm>

#include "titan/ops/cuda/cuda_check.h"
#include "titan/ops/cuda/float8_kernels.h"

namespace titan::cuda {

namespace {
constexpr int kTile = 32, kRowsPerPass = 8;  // a 32 x 32 tile, 32 x 8 threads

__device__ __forceinline__ float load(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float load(const bf16* p, int64_t i) {
  return __bfloat162float(reinterpret_cast<const __nv_bfloat16*>(p)[i]);
}

// |v| as bits: for non-negative floats unsigned order is value order, and NaN's bits exceed
// inf's, so an unsigned max over them is an exact, order-free amax that NaN wins.
__device__ __forceinline__ unsigned abs_bits(float v) { return __float_as_uint(v) & 0x7FFFFFFFu; }

// The block's max (blockDim.x a multiple of 32, at most 1024) in lane 0 of warp 0.
__device__ __forceinline__ unsigned block_max(unsigned m) {
  __shared__ unsigned warps[32];
  m = __reduce_max_sync(0xffffffffu, m);
  if ((threadIdx.x & 31) == 0) warps[threadIdx.x >> 5] = m;
  __syncthreads();
  m = threadIdx.x < (blockDim.x >> 5) ? warps[threadIdx.x] : 0u;
  return threadIdx.x < 32 ? __reduce_max_sync(0xffffffffu, m) : m;
}

// One atomic per block (a capped grid strides over the tensor).
template <typename T>
__global__ void amax_tensor_kernel(const T* src, int64_t count, unsigned* amax) {
  unsigned m = 0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    m = max(m, abs_bits(load(src, i)));
  m = block_max(m);
  if (threadIdx.x == 0) atomicMax(amax, m);
}

template <typename T>
__global__ void amax_rows_kernel(const T* src, int64_t cols, unsigned* amax) {
  const int64_t row = blockIdx.x;
  unsigned m = 0;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) m = max(m, abs_bits(load(src, row * cols + c)));
  m = block_max(m);
  if (threadIdx.x == 0) amax[row] = m;  // one block per row: no atomic needed
}

// 32 columns per block, coalesced along a row; rows split over threadIdx.y and gridDim.y. The
// block's rows meet in shared memory first: one atomic per column per block.
template <typename T>
__global__ void amax_columns_kernel(const T* src, int64_t rows, int64_t cols, unsigned* amax) {
  __shared__ unsigned partial[kRowsPerPass][kTile];
  const int64_t c = blockIdx.x * static_cast<int64_t>(kTile) + threadIdx.x;
  unsigned m = 0;
  if (c < cols)
    for (int64_t r = blockIdx.y * static_cast<int64_t>(blockDim.y) + threadIdx.y; r < rows;
         r += static_cast<int64_t>(gridDim.y) * blockDim.y)
      m = max(m, abs_bits(load(src, r * cols + c)));
  partial[threadIdx.y][threadIdx.x] = m;
  __syncthreads();
  if (threadIdx.y != 0 || c >= cols) return;
  for (int y = 1; y < kRowsPerPass; ++y) m = max(m, partial[y][threadIdx.x]);
  atomicMax(amax + c, m);
}

__global__ void repeat_kernel(const float* value, float* dst, int64_t count) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < count) dst[i] = *value;
}

__global__ void scales_kernel(const float* amax, int64_t count, double max_finite, bool power_of_2, float* scale,
                              float* inv_scale, int64_t stride) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= count) return;
  const float a = amax[i];
  // torchao's amax_to_scale: in double, amax floored at 1e-12 (NaN stays NaN), then float.
  float s = isnan(a) ? a : static_cast<float>(max_finite / fmax(static_cast<double>(a), 1e-12));
  if (power_of_2 && isfinite(s) && s > 0.0f) s = __uint_as_float(__float_as_uint(s) & 0xFF800000u);
  scale[i * stride] = s;
  inv_scale[i * stride] = 1.0f / s;
}

template <typename T>
__global__ void cast_kernel(const T* src, int64_t rows, int64_t cols, const float* scale, ScaleSpan span, bool e4m3,
                            uint8_t* out, uint8_t* out_t) {
  __shared__ uint8_t tile[kTile][kTile + 4];
  const int64_t r0 = blockIdx.y * static_cast<int64_t>(kTile), c0 = blockIdx.x * static_cast<int64_t>(kTile);
  const __nv_fp8_interpretation_t format = e4m3 ? __NV_E4M3 : __NV_E5M2;
  for (int dy = threadIdx.y; dy < kTile; dy += kRowsPerPass) {
    const int64_t r = r0 + dy, c = c0 + threadIdx.x;
    if (r >= rows || c >= cols) continue;
    const float s = span == ScaleSpan::tensor ? scale[0] : span == ScaleSpan::rows ? scale[r] : scale[c];
    // Saturating (SATFINITE: out-of-range values and +-inf to +-max) and round to nearest even.
    const uint8_t q = __nv_cvt_float_to_fp8(load(src, r * cols + c) * s, __NV_SATFINITE, format);
    if (out) out[r * cols + c] = q;
    tile[dy][threadIdx.x] = q;
  }
  if (!out_t) return;
  __syncthreads();
  for (int dx = threadIdx.y; dx < kTile; dx += kRowsPerPass) {  // the tile's columns become rows
    const int64_t c = c0 + dx, r = r0 + threadIdx.x;
    if (r < rows && c < cols) out_t[c * rows + r] = tile[threadIdx.x][dx];
  }
}

__global__ void transpose_kernel(const uint8_t* src, int64_t rows, int64_t cols, uint8_t* dst) {
  __shared__ uint8_t tile[kTile][kTile + 4];
  const int64_t r0 = blockIdx.y * static_cast<int64_t>(kTile), c0 = blockIdx.x * static_cast<int64_t>(kTile);
  for (int dy = threadIdx.y; dy < kTile; dy += kRowsPerPass) {
    const int64_t r = r0 + dy, c = c0 + threadIdx.x;
    if (r < rows && c < cols) tile[dy][threadIdx.x] = src[r * cols + c];
  }
  __syncthreads();
  for (int dx = threadIdx.y; dx < kTile; dx += kRowsPerPass) {  // the tile's columns become rows
    const int64_t c = c0 + dx, r = r0 + threadIdx.x;
    if (r < rows && c < cols) dst[c * rows + r] = tile[threadIdx.x][dx];
  }
}

unsigned grid_for(int64_t count, int threads) {
  const int64_t b = (count + threads - 1) / threads;
  return static_cast<unsigned>(b < 65535 * 32 ? (b > 0 ? b : 1) : 65535 * 32);
}

template <typename T>
void amax_impl(const T* src, int64_t rows, int64_t cols, ScaleSpan span, float* amax, cudaStream_t stream) {
  const int64_t count = scale_count(span, rows, cols);
  TITAN_CUDA_CHECK(cudaMemsetAsync(amax, 0, sizeof(float) * static_cast<size_t>(count), stream));
  if (rows == 0 || cols == 0) return;
  unsigned* bits = reinterpret_cast<unsigned*>(amax);
  if (span == ScaleSpan::tensor) {
    amax_tensor_kernel<<<std::min(grid_for(rows * cols, 256), 1024u), 256, 0, stream>>>(src, rows * cols, bits);
  } else if (span == ScaleSpan::rows) {
    amax_rows_kernel<<<static_cast<unsigned>(rows), 256, 0, stream>>>(src, cols, bits);
  } else {
    const dim3 grid(static_cast<unsigned>((cols + kTile - 1) / kTile),
                    static_cast<unsigned>(std::min<int64_t>((rows + kRowsPerPass - 1) / kRowsPerPass, 64)));
    amax_columns_kernel<<<grid, dim3(kTile, kRowsPerPass), 0, stream>>>(src, rows, cols, bits);
  }
  TITAN_CUDA_CHECK_LAUNCH();
}

template <typename T>
void cast_impl(const T* src, int64_t rows, int64_t cols, const float* scale, ScaleSpan span, float8::Format format,
               uint8_t* out, uint8_t* out_t, cudaStream_t stream) {
  if (rows == 0 || cols == 0) return;
  const dim3 grid(static_cast<unsigned>((cols + kTile - 1) / kTile), static_cast<unsigned>((rows + kTile - 1) / kTile));
  cast_kernel<<<grid, dim3(kTile, kRowsPerPass), 0, stream>>>(src, rows, cols, scale, span,
                                                              format == float8::Format::e4m3, out, out_t);
  TITAN_CUDA_CHECK_LAUNCH();
}
}  // namespace

void float8_amax(const bf16* src, int64_t rows, int64_t cols, ScaleSpan span, float* amax, cudaStream_t stream) {
  amax_impl(src, rows, cols, span, amax, stream);
}
void float8_amax(const float* src, int64_t rows, int64_t cols, ScaleSpan span, float* amax, cudaStream_t stream) {
  amax_impl(src, rows, cols, span, amax, stream);
}

void float8_scales(const float* amax, int64_t count, float8::Format format, bool power_of_2, float* scale,
                   float* inv_scale, cudaStream_t stream, int64_t stride) {
  if (count == 0) return;
  scales_kernel<<<grid_for(count, 256), 256, 0, stream>>>(amax, count, float8::max_finite(format), power_of_2, scale,
                                                           inv_scale, stride);
  TITAN_CUDA_CHECK_LAUNCH();
}

void float8_transpose(const uint8_t* src, int64_t rows, int64_t cols, uint8_t* dst, cudaStream_t stream) {
  if (rows == 0 || cols == 0) return;
  const dim3 grid(static_cast<unsigned>((cols + kTile - 1) / kTile), static_cast<unsigned>((rows + kTile - 1) / kTile));
  transpose_kernel<<<grid, dim3(kTile, kRowsPerPass), 0, stream>>>(src, rows, cols, dst);
  TITAN_CUDA_CHECK_LAUNCH();
}

void float8_repeat_scale(const float* value, float* dst, int64_t count, cudaStream_t stream) {
  if (count == 0) return;
  repeat_kernel<<<grid_for(count, 256), 256, 0, stream>>>(value, dst, count);
  TITAN_CUDA_CHECK_LAUNCH();
}

void float8_cast(const bf16* src, int64_t rows, int64_t cols, const float* scale, ScaleSpan span, float8::Format format,
                 uint8_t* out, uint8_t* out_t, cudaStream_t stream) {
  cast_impl(src, rows, cols, scale, span, format, out, out_t, stream);
}
void float8_cast(const float* src, int64_t rows, int64_t cols, const float* scale, ScaleSpan span, float8::Format format,
                 uint8_t* out, uint8_t* out_t, cudaStream_t stream) {
  cast_impl(src, rows, cols, scale, span, format, out, out_t, stream);
}

}  // namespace titan::cuda
