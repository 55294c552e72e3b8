// Causal grouped-query attention through cuDNN's fused flash-attention engines, the opt-in
// third implementation (TITAN_ATTENTION_IMPL=cudnn). Same layouts and lse convention as
// cuda::attention_forward/backward (cuda_ops.h), so either side can pair with titan's kernels.
// One operation graph and plan per shape, built on first use (the eager first step, before
// any CUDA graph capture); the plan's workspace comes from the caching allocator and stays.
#pragma once
#include <cuda_runtime.h>

#include <map>
#include <memory>
#include <tuple>

#include "titan/ops/cuda/allocator.h"
#include "titan/ops/cuda/cuda_ops.h"

namespace titan::cuda {

namespace cudnn {
class Graph;
}

// uids of the tensors one attention graph binds at execute time (0: not in this graph).
struct AttentionUids {
  int64_t q = 0, k = 0, v = 0, o = 0, stats = 0, dout = 0, dq = 0, dk = 0, dv = 0;
  int64_t scale = 0, neg_inf = 0, one = 0;  // host scalars
  int64_t softmax_sum = 0, dq_accum = 0;    // backward: fp32 tensors in memory titan provides
};
// The operation graphs alone, before any plan: every op descriptor is finalized, which checks
// attribute types and matmul shapes without a GPU (the tests do).
AttentionUids describe_attention_forward(cudnn::Graph& g, const AttentionShape& s);
AttentionUids describe_attention_backward(cudnn::Graph& g, const AttentionShape& s);

// True when TITAN_ATTENTION_IMPL asks for cuDNN; UserError for a value other than titan or cudnn.
bool cudnn_attention_requested();

class CudnnAttention {
 public:
  CudnnAttention(cudaStream_t stream, DeviceAllocator& alloc);
  ~CudnnAttention();
  CudnnAttention(const CudnnAttention&) = delete;
  CudnnAttention& operator=(const CudnnAttention&) = delete;

  // The shapes given to cuDNN: head_dim 64 or 128 and seq a multiple of 128 (through 9.15 other
  // key lengths need a padding mask in the backward graph, and were reported to fault under
  // graph replay); the rest stay on titan's kernels.
  static bool handles(const AttentionShape& s);
  size_t version() const { return version_; }  // of the loaded cuDNN, e.g. 91400
  void forward(const bf16* q, const bf16* k, const bf16* v, bf16* o, float* lse, const AttentionShape& s);
  void backward(const bf16* q, const bf16* k, const bf16* v, const bf16* o, const float* lse, const bf16* dout,
                bf16* dq, bf16* dk, bf16* dv, const AttentionShape& s);

 private:
  struct Plan;
  using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t>;
  Plan& forward_plan(const AttentionShape& s);
  Plan& backward_plan(const AttentionShape& s);

  cudaStream_t stream_;
  DeviceAllocator& alloc_;
  size_t version_ = 0;
  void* handle_ = nullptr;  // cudnnHandle_t, kept out of this header so callers need no cuDNN headers
  std::map<Key, std::unique_ptr<Plan>> forward_, backward_;
};

}  // namespace titan::cuda
