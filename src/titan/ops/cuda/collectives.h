// Collectives on device memory, queued on a stream: what FSDP and HSDP on GPUs need from a
// communication library (NCCL implements it, parallel/nccl_group.h). The CUDA stores and
// engines see only this interface.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "titan/ops/cuda/cuda_ops.h"

namespace titan::cuda {

class DeviceCollectives {
 public:
  virtual ~DeviceCollectives() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Every rank sends `count` elements; `recv` gets size() x count, rank 0's first.
  virtual void all_gather_bf16(const bf16* send, bf16* recv, int64_t count, cudaStream_t stream) = 0;
  // `send` holds size() x count floats; this rank receives the sum over the ranks of its slice
  // [rank() x count, + count).
  virtual void reduce_scatter_f32(const float* send, float* recv, int64_t count, cudaStream_t stream) = 0;
  // Tensor parallel's sequence-parallel boundaries: the same reduce-scatter on bf16 activations
  // (summed in bf16, as torch's TP reduce-scatters its bf16 partial outputs).
  virtual void reduce_scatter_bf16(const bf16* send, bf16* recv, int64_t count, cudaStream_t stream) = 0;
  // Every rank sends `bytes` bytes; `recv` gets size() x bytes (loss parallel's row statistics).
  virtual void all_gather_bytes(const void* send, void* recv, int64_t bytes, cudaStream_t stream) = 0;
  // In place: every rank gets the elementwise max of non-negative floats (the FP8 all-gather's
  // weight amaxes), compared as unsigned bits as the amax kernel compares them: NaN wins.
  virtual void all_reduce_max_f32(float* data, int64_t count, cudaStream_t stream) = 0;
  // In place: every rank gets the elementwise sum (HSDP's gradient sum across replicas).
  virtual void all_reduce_f32(float* data, int64_t count, cudaStream_t stream) = 0;
  // Collectives issued between these two run as one launch (per-parameter calls of a unit).
  virtual void group_start() = 0;
  virtual void group_end() = 0;
  // Waits for `stream`'s work, collectives included; a peer that died or hangs ends this rank
  // after the group's timeout instead of waiting forever.
  virtual void synchronize(cudaStream_t stream) = 0;
};

}  // namespace titan::cuda
