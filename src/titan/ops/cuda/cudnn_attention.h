// Causal grouped-query attention through cuDNN's fused flash-attention engines, the opt-in
// third implementation (TITAN_ATTENTION_IMPL=cudnn or auto). Same layouts and lse convention as
// cuda::attention_forward/backward (cuda_ops.h), so either side can pair with titan's kernels.
// One operation graph and plan per shape, built on first use (the eager first step, before
// any CUDA graph capture); the plan's workspace comes from the caching allocator and stays.
#pragma once
#include <cuda_runtime.h>

#include <map>
#include <memory>
#include <string>
#include <tuple>

#include "titan/ops/attention_library.h"
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


class CudnnAttention {
 public:
  // fall_back: a shape cuDNN cannot plan is reported once on stderr and left to titan's kernels
  // (forward/backward return false); otherwise the planning error propagates.
  CudnnAttention(cudaStream_t stream, DeviceAllocator& alloc, bool fall_back = false);
  ~CudnnAttention();
  CudnnAttention(const CudnnAttention&) = delete;
  CudnnAttention& operator=(const CudnnAttention&) = delete;

  // cudnn_attention_takes (attention_library.h); the rest stay on titan's kernels.
  static bool handles(const AttentionShape& s);
  size_t version() const { return version_; }  // of the loaded cuDNN, e.g. 91400
  int64_t plans_in_use() const;                 // forward and backward plans built, not refused
  // Enqueue the op and return true, or return false (nothing enqueued) for a shape it does not
  // take or, with fall_back, could not plan: the caller then runs titan's kernels.
  bool forward(const bf16* q, const bf16* k, const bf16* v, bf16* o, float* lse, const AttentionShape& s);
  bool backward(const bf16* q, const bf16* k, const bf16* v, const bf16* o, const float* lse, const bf16* dout,
                bf16* dq, bf16* dk, bf16* dv, const AttentionShape& s);

 private:
  struct Plan;
  using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t>;
  using Plans = std::map<Key, std::unique_ptr<Plan>>;  // a null plan: the shape was refused
  Plan* plan(Plans& plans, const AttentionShape& s, bool backward);
  void allocate(Plan& p, const AttentionShape& s, bool backward);  // scratch and workspace

  cudaStream_t stream_;
  DeviceAllocator& alloc_;
  bool fall_back_;
  size_t version_ = 0;
  void* handle_ = nullptr;  // cudnnHandle_t, kept out of this header so callers need no cuDNN headers
  Plans forward_, backward_;
};

// The cuDNN attention `impl` asks for on this stream: null under titan; under auto also null when
// cuDNN cannot be opened here (no library, an unsuitable version, no device), with the reason in
// *why_not. Under cudnn those failures are errors.
std::unique_ptr<CudnnAttention> open_cudnn_attention(AttentionLibrary impl, cudaStream_t stream, DeviceAllocator& alloc,
                                                     std::string* why_not);

}  // namespace titan::cuda
