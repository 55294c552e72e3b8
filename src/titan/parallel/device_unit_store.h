// FSDP's units on one CUDA device, for the one model: this rank's shards live in
// DeviceParameters (fp32 master, gradients, moments and the bf16 compute copy, each padded to
// an equal piece); a unit's whole bf16 weights are all-gathered over NCCL on a second stream,
// so the next unit's gather overlaps this one's compute, and its whole fp32 gradient is
// reduce-scattered there too, overlapping the next unit's backward, the result added into the
// gradient shards. It is also the model's WeightStore: weights and gradients are read from the
// gathered units. The policy (when to gather, prefetch, free, reduce) is parallel/fsdp.h's.
// Memory: the root and two blocks gathered, two blocks' whole gradients, one unit's reduced
// shards. Waits go through the collectives' synchronize, so a dead peer ends the rank.
#pragma once
#include <cuda_runtime.h>

#include <vector>

#include "titan/core/weight_store.h"
#include "titan/ops/cuda/collectives.h"
#include "titan/ops/cuda/cuda_backend.h"
#include "titan/ops/cuda/device_parameters.h"
#include "titan/parallel/fsdp.h"

namespace titan::parallel {

class DeviceUnitStore final : public UnitStore, public WeightStore {
 public:
  // units[u]: the parameter indices (the layout's order) of unit u.
  DeviceUnitStore(std::vector<std::vector<size_t>> units, cuda::DeviceParameters& shards,
                  cuda::DeviceCollectives& collectives, cuda::CudaBackend& backend);
  ~DeviceUnitStore() override;
  DeviceUnitStore(const DeviceUnitStore&) = delete;
  DeviceUnitStore& operator=(const DeviceUnitStore&) = delete;

  int units() const override { return static_cast<int>(units_.size()); }
  void gather(int u) override;
  void use(int u) override;
  void reshard(int u) override;
  void begin_gradients(int u) override;
  void reduce_gradients(int u) override;
  void end_backward() override { retire_reduced(); }

  const void* weight(size_t i) override;
  float* grad(size_t i) override;

  // Frees every unit's gathered weights and gradients (a pass that threw left some behind, or
  // the shards changed under them).
  void release_all();
  // Waits for both streams, collectives with the group's deadline.
  void synchronize();
  double take_comm_bytes();
  size_t peak_unsharded_bytes() const { return peak_unsharded_; }

 private:
  void comm_after_compute();
  void compute_after_comm();
  void retire_reduced();
  void track(size_t bytes, bool allocated);

  std::vector<std::vector<size_t>> units_;
  cuda::DeviceParameters& shards_;
  cuda::DeviceCollectives& collectives_;
  cuda::CudaBackend& backend_;
  cudaStream_t compute_ = nullptr, comm_ = nullptr;
  std::vector<size_t> unit_of_;
  std::vector<int64_t> unit_offset_, reduced_offset_, unit_elems_;  // per parameter, per parameter, per unit
  std::vector<cuda::DeviceBuffer> gathered_, grads_;                // per unit, only while needed
  std::vector<cudaEvent_t> gathered_event_, reduced_event_;        // per unit
  std::vector<bool> awaiting_;        // gathered on comm_, not yet waited for by compute_
  std::vector<size_t> reducing_;      // units whose reduce-scatter may still read their gradients
  cuda::DeviceBuffer reduced_;        // one unit's reduce-scatter results
  cudaEvent_t compute_mark_ = nullptr, comm_mark_ = nullptr;
  double comm_bytes_ = 0;
  size_t unsharded_ = 0, peak_unsharded_ = 0;
};

}  // namespace titan::parallel
