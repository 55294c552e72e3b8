// Float8 casts on the device, the GPU side of ops/float8 (tested bit for bit against it in
// tests/gpu/test_float8_cuda.cpp): amax, scales and saturating casts, with the scales kept on the
// device so a step needs no host synchronisation (and can be captured in a CUDA graph).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "titan/ops/cuda/cuda_ops.h"
#include "titan/ops/cuda/scale_span.h"
#include "titan/ops/float8.h"

namespace titan::cuda {

// amax[scale_count] of |src| (src rows x cols, row-major); NaN wins, as on the host. Zeroes
// amax first.
void float8_amax(const bf16* src, int64_t rows, int64_t cols, ScaleSpan span, float* amax, cudaStream_t stream);
void float8_amax(const float* src, int64_t rows, int64_t cols, ScaleSpan span, float* amax, cudaStream_t stream);

// scale = float8::scale_from_amax(amax) and inv_scale = 1 / scale, count of each, element i at
// [i x stride] of both (a stride lets each weight's pair sit 16-byte aligned for cuBLASLt).
void float8_scales(const float* amax, int64_t count, float8::Format format, bool power_of_2, float* scale,
                   float* inv_scale, cudaStream_t stream, int64_t stride = 1);

// dst[0, count) = *value (a tensorwise factor repeated for an outer-vector GEMM).
void float8_repeat_scale(const float* value, float* dst, int64_t count, cudaStream_t stream);

// out = saturate_round(src * scale) as the format's bits, row-major [rows, cols], and/or its
// transpose out_t [cols, rows] (either may be null). `scale` as `span` says.
void float8_cast(const bf16* src, int64_t rows, int64_t cols, const float* scale, ScaleSpan span, float8::Format format,
                 uint8_t* out, uint8_t* out_t, cudaStream_t stream);
void float8_cast(const float* src, int64_t rows, int64_t cols, const float* scale, ScaleSpan span, float8::Format format,
                 uint8_t* out, uint8_t* out_t, cudaStream_t stream);

// dst [cols, rows] = src [rows, cols]^T, float8 bytes (a weight gathered in e4m3, turned
// K-major for the input-gradient GEMM).
void float8_transpose(const uint8_t* src, int64_t rows, int64_t cols, uint8_t* dst, cudaStream_t stream);

}  // namespace titan::cuda
