// Op signatures of the CUDA backend (device pointers; work queued on `stream`).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

namespace titan::cuda {

// Number of usable CUDA devices; 0 (not an error) where there is no driver or GPU.
int device_count();
std::string device_name(int device);

// bf16 <-> f32 casts; f32 -> bf16 rounds to nearest even like titan::f32_to_bf16.
void cast_f32_to_bf16(const float* in, uint16_t* out, int64_t n, cudaStream_t stream);
void cast_bf16_to_f32(const uint16_t* in, float* out, int64_t n, cudaStream_t stream);

}  // namespace titan::cuda
