// What both attention implementations (attention.cu, attention_tc.cu) need to launch their
// kernels: the scalar shape they receive and the one-time shared-memory attribute.
#pragma once
#include <cmath>
#include <cstdint>

#include "titan/ops/cuda/cuda_check.h"
#include "titan/ops/cuda/cuda_ops.h"

namespace titan::cuda::detail {

struct AttentionDims {
  int64_t seq, heads, kv_heads;
  float scale;  // 1 / sqrt(head_dim)
};

inline AttentionDims dims_of(const AttentionShape& s) {
  return {s.seq, s.heads, s.kv_heads, 1.0f / std::sqrt(static_cast<float>(s.head_dim))};
}

// Raises a kernel's dynamic shared-memory limit on its first launch only (one device per
// process), so later launches, also those captured into a CUDA graph, make no attribute calls.
template <auto kKernel>
void allow_smem_once(size_t bytes) {
  static const bool raised = [bytes] {
    TITAN_CUDA_CHECK(cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
    return true;
  }();
  (void)raised;
}

}  // namespace titan::cuda::detail
