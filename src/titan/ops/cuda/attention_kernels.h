// The two attention implementations behind cuda::attention_forward/backward (cuda_ops.h):
// tensor-core kernels (attention_tc.cu, the default) and the plain FMA kernels
// (attention.cu, kept as a second, independent implementation the tests compare against).
#pragma once
#include "titan/ops/cuda/cuda_ops.h"

namespace titan::cuda {

void attention_forward_tc(const bf16* q, const bf16* k, const bf16* v, bf16* o, float* lse, const AttentionShape& s,
                          cudaStream_t stream);
// `delta` already holds rowsum(dout * o).
void attention_backward_tc(const bf16* q, const bf16* k, const bf16* v, const float* lse, const bf16* dout, bf16* dq,
                           bf16* dk, bf16* dv, const float* delta, const AttentionShape& s, cudaStream_t stream);

}  // namespace titan::cuda
