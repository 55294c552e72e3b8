// FSDP's units on the host: each parameter keeps only its dim-0 shard on this rank (fp32
// master, grad, AdamW moments: 1/N of the model); a unit's whole weights exist from its
// all-gather until it reshards, and its whole gradient only during its own backward, which
// ends in a reduce-scatter into the grad shards. The whole tensors are what each Parameter's
// `full` and `full_grad` view, so the CPU model reads them through ParameterWeights.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <vector>

#include "titan/core/parameter.h"
#include "titan/parallel/fsdp.h"
#include "titan/parallel/process_group.h"

namespace titan::parallel {

class HostUnitStore final : public UnitStore {
 public:
  // Takes over `full` and `full_grad` of every parameter in `units` (shards of `group`'s ranks).
  HostUnitStore(std::vector<std::vector<Parameter*>> units, ProcessGroup& group);
  int units() const override { return static_cast<int>(units_.size()); }
  void gather(int u) override;
  void use(int u) override { gather(u); }  // gathers are blocking
  void reshard(int u) override;
  void begin_gradients(int u) override;
  void reduce_gradients(int u) override;

  // FP8 all-gather (float8.enable_fsdp_float8_all_gather): these weights are gathered as e4m3
  // bytes, cast with one tensorwise scale from the max over the ranks of their fp32 master
  // shards' amax, and dequantised into `full` (Parameter::full_float8_scale says so). With
  // `precompute`, the amaxes of all of them move in one all-reduce per step; else one per
  // weight, at its gather.
  void enable_float8_gather(const std::vector<const Parameter*>& weights, bool precompute);
  // The optimizer changed the weights: scales are taken anew at the next gather.
  void weights_changed() { scales_valid_ = false; }
  int64_t float8_amax_reductions() const { return amax_reductions_; }

  CommVolume& volume() { return volume_; }
  // Bytes of whole weights and gradients held now, and the most held at once.
  size_t unsharded_bytes() const { return unsharded_bytes_; }
  size_t peak_unsharded_bytes() const { return peak_unsharded_bytes_; }

 private:
  struct Unit {
    std::vector<Parameter*> params;
    std::vector<std::vector<int64_t>> counts;  // per parameter: each rank's shard elements
    int64_t elements = 0;
    Tensor weights, grads;  // flat whole-unit buffers; each parameter's full/full_grad is a view
  };
  Unit& unit(int index);
  void track(const Tensor& t, bool allocated);
  float float8_scale(const Parameter& p);
  void gather_float8(Parameter& p, const std::vector<int64_t>& counts);

  ProcessGroup& group_;
  std::vector<Unit> units_;
  std::vector<float> scratch_;  // one parameter's reduced shard
  CommVolume volume_;
  std::map<const Parameter*, size_t> float8_;  // FP8-gathered weights, by their place in float8_scales_
  std::vector<float> float8_scales_;
  bool precompute_ = false, scales_valid_ = false;
  int64_t amax_reductions_ = 0;
  std::vector<uint8_t> send_bytes_, gathered_bytes_;
  size_t unsharded_bytes_ = 0, peak_unsharded_bytes_ = 0;
};

}  // namespace titan::parallel
