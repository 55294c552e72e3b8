// The head sizes the CUDA attention kernels are built for (ops/cuda/attention*.cu), known to
// host code that must refuse a config without a GPU or a CUDA build.
#pragma once
#include <cstdint>

namespace titan {

constexpr bool cuda_attention_head_dim_supported(int64_t head_dim) {
  return head_dim == 16 || head_dim == 32 || head_dim == 64 || head_dim == 128;
}

}  // namespace titan
