// Tensor parallel's collectives on one CUDA device: the hooks the one model calls at sequence
// parallel's boundaries and in the classifier (core/tensor_parallel_hooks.h), queued on the
// backend's stream over device collectives (NCCL in a run, threads on one card in the tests).
// The CPU's over MPI are parallel/tensor_parallel.h; the plan (which tensors are sliced, what
// each boundary moves) is the same and lives in the layout and the model.
#pragma once
#include <cuda_runtime.h>

#include <vector>

#include "titan/core/tensor_parallel_hooks.h"
#include "titan/models/llama3/layout.h"
#include "titan/ops/cuda/collectives.h"
#include "titan/ops/cuda/device_parameters.h"
#include "titan/parallel/fsdp.h"

namespace titan::parallel {

class DeviceTensorParallel final : public TensorParallelHooks {
 public:
  // `layout`: this rank's sliced layout (its replicated tensors are the norms).
  DeviceTensorParallel(cuda::DeviceCollectives& group, cudaStream_t stream, const llama3::ModelLayout& layout);
  int degree() const override { return group_.size(); }
  int rank() const { return group_.rank(); }

  // On the CUDA backend's bf16 activations and its statistics, queued on the stream.
  void gather_rows(const void* shard, void* whole, int64_t rows, int64_t width) override;
  void reduce_scatter_rows(const void* whole, void* shard, int64_t rows, int64_t width) override;
  void gather_stats(const double* mine, double* all, int64_t count) override;
  void gather_logits(const void* mine, void* all, int64_t count) override;

  // After a step's micro-batches: each replicated tensor's gradient (its FSDP shard) holds this
  // rank's rows' share; sums them over the group, in one group of all-reduces.
  void reduce_replicated_gradients(cuda::DeviceParameters& params);
  // Which tensors (by layout position) every rank holds whole: rank 0's count in the gradient norm.
  const std::vector<bool>& replicated() const { return replicated_; }
  // Bytes moved since the last call (as a ring moves them).
  CommVolume take_volume();

 private:
  cuda::DeviceCollectives& group_;
  cudaStream_t stream_;
  std::vector<bool> replicated_;
  CommVolume volume_;
};

}  // namespace titan::parallel
