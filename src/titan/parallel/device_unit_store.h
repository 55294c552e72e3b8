// FSDP's units on one CUDA device, for the one model: this rank's shards live in
// DeviceParameters (fp32 master, gradients, moments and the bf16 compute copy, each padded to
// an equal piece); a unit's whole bf16 weights are all-gathered over NCCL on a second stream,
// so the next unit's gather overlaps this one's compute, and its whole fp32 gradient is
// reduce-scattered there too, overlapping the next unit's backward, the result added into the
// gradient shards. It is also the model's WeightStore: weights and gradients are read from the
// gathered units. The policy (when to gather, prefetch, free, reduce) is parallel/fsdp.h's.
// With the FP8 all-gather the float8 linears' weights travel as e4m3 bytes cast from the fp32
// master shards with one tensorwise scale per weight (the max over the ranks of the shards'
// amax), and the gathered bytes feed the FP8 GEMMs as they are.
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

  const void* weight(size_t i) override;  // e4m3 bytes for an FP8-gathered weight
  float* grad(size_t i) override;
  const float* float8_scale(size_t i) override;  // device memory; null unless FP8-gathered
  const float* float8_inv_scale(size_t i) override;

  // FP8 all-gather (float8.enable_fsdp_float8_all_gather) for these parameters, each with its
  // row length (columns): with `precompute`, the amaxes of all of them meet in one all-reduce
  // (max) at the first gather after the weights change; else one per weight, at each gather of
  // it, as torchao's default does.
  struct Float8Weight {
    size_t index;
    int64_t cols;
  };
  void enable_float8_gather(const std::vector<Float8Weight>& weights, bool precompute);
  // AdamW (or a load) changed the master weights: their scales are taken anew.
  void weights_changed() { scales_valid_ = false; }
  int64_t float8_amax_reductions() const { return amax_reductions_; }

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
  // On the comm stream, before unit u's gather group: the scales its float8 weights are cast with.
  void float8_scales_for(size_t u);
  void amax_of_shard(size_t i, float* amax);
  const float* float8_slot(size_t i, int which);  // which: 1 scale, 2 inverse

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
  // FP8 all-gather: each float8 weight's slot (-1: gathered in bf16) and columns; amax, scale and
  // 1/scale of every slot (3 x slots floats); one unit's e4m3 shards, sent from here.
  std::vector<int64_t> float8_slot_, float8_cols_, send_offset_;
  int64_t float8_slots_ = 0;
  cuda::DeviceBuffer float8_scales_, float8_send_;
  bool precompute_ = false, scales_valid_ = false;
  int64_t amax_reductions_ = 0;
  double comm_bytes_ = 0;
  size_t unsharded_ = 0, peak_unsharded_ = 0;
};

}  // namespace titan::parallel
