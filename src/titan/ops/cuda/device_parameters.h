// A model's parameters mirrored on one CUDA device, as the WeightStore the model reads: flat
// fp32 buffers for master weights, gradients and the two AdamW moments, and one bf16 buffer of
// compute weights, each parameter at its flat_layout offset (ops/cuda/host_plan.h). The host
// parameters stay the owners for init and checkpoints: upload and download move the state.
// Under FSDP the parameters are this rank's dim-0 shards, each padded to ceil(rows / world)
// rows (NCCL gathers equal pieces); the model then reads weights through the FSDP unit store
// (parallel/device_unit_store.h), which gathers them from these shards.
#pragma once
#include <cuda_runtime.h>

#include <deque>
#include <utility>
#include <vector>

#include "titan/core/parameter.h"
#include "titan/core/weight_store.h"
#include "titan/ops/cuda/allocator.h"
#include "titan/ops/cuda/cuda_ops.h"
#include "titan/ops/cuda/host_plan.h"

namespace titan::cuda {

class DeviceParameters final : public WeightStore {
 public:
  // `accumulated[i]`: parameter i's gradient is summed into (embedding rows, norm weights) rather
  // than written by one GEMM, so a step that overwrites gradients must clear it first.
  // `sharded`: FSDP even where the parameters are whole (training.fsdp_on_one_rank).
  DeviceParameters(const std::deque<Parameter>& params, const std::vector<bool>& accumulated, DeviceAllocator& alloc,
                   cudaStream_t stream, bool sharded = false);
  const void* weight(size_t i) override;
  float* grad(size_t i) override;
  const float* master(size_t i) override;  // whole parameters only (null under FSDP)

  // Master weights and moments from the host (and the bf16 copy), and back; both synchronise.
  void upload(const std::deque<Parameter>& params);
  void download(std::deque<Parameter>& params);
  void zero_grad();
  void zero_accumulated_grads();
  // Sum of squares of every gradient into *out on the device.
  void grad_sq_sum(double* out, double* scratch);
  void adamw(const AdamWStep& step);
  // The graph-safe update: factors in device memory, clipping and the skip decided on the device.
  void adamw_device_step(const AdamWStep* step, const double* grad_sq_sum, const double* loss_sum, double max_norm);
  std::vector<float> gradient(size_t i);  // tests: this rank's rows
  int64_t total() const { return layout_.total; }
  size_t count() const { return layout_.offset.size(); }
  // Sum of squares of the gradients of the parameters not skipped (skip[i]), summed on the host
  // in parameter order from one partial per run of kept parameters; `partials` holds count()
  // doubles on the device. Synchronises.
  double grad_sq_sum_except(const std::vector<bool>& skip, double* partials, double* scratch);
  bool sharded() const { return world_ > 1 || force_sharded_; }
  // The shards' layout: parameters are rank() of world() (0 of 1 when whole).
  int world() const { return world_; }
  int rank() const { return rank_; }
  // Where parameter i's shard lives in the flat buffers, and its padded shard elements.
  int64_t offset(size_t i) const { return layout_.offset[i]; }
  int64_t shard_elements(size_t i) const { return shard_[i]; }
  bf16* weights_bf16() const { return weights_.as<bf16>(); }
  float* gradients() const { return grad_.as<float>(); }
  const float* masters() const { return master_.as<float>(); }

 private:
  cudaStream_t stream_;
  FlatLayout layout_;
  std::vector<int64_t> local_, shard_;  // this rank's elements, and the padded shard
  int world_ = 1, rank_ = 0;
  bool force_sharded_ = false;
  std::vector<std::pair<int64_t, int64_t>> accumulated_;  // [begin, end) ranges of grad_
  DeviceBuffer master_, grad_, exp_avg_, exp_avg_sq_, weights_;
};

}  // namespace titan::cuda
