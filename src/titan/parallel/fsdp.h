// FSDP2's semantics on host tensors. Every parameter keeps only its dim-0 shard on this rank
// (fp32 master, grad, AdamW moments: 1/N of the model); a unit's whole weights exist from its
// all-gather until it reshards, and its whole gradient only during its own backward, which
// ends in a reduce-scatter into the grad shards. Units come from the model (the root and each
// block); the model calls these hooks and never sees the group.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "titan/core/module_hooks.h"
#include "titan/core/parameter.h"
#include "titan/core/reshard_policy.h"
#include "titan/parallel/process_group.h"

namespace titan::parallel {

// Bytes this rank moved, counted as a ring moves them: an all-gather or reduce-scatter of a
// tensor of T elements sends T - (own shard) elements per rank; an all-reduce twice that.
struct CommVolume {
  double all_gather = 0, reduce_scatter = 0, all_reduce = 0;
  double total() const { return all_gather + reduce_scatter + all_reduce; }
};

class FullyShardedDataParallel final : public ModuleHooks {
 public:
  // Takes over `full` and `full_grad` of every parameter in `units` (shards of `group`'s ranks).
  FullyShardedDataParallel(std::vector<std::vector<Parameter*>> units, ProcessGroup& group, ReshardPolicy options);
  void before_forward(int unit) override;
  void after_forward(int unit, bool backward_follows) override;
  void before_backward(int unit) override;
  // Reduce-scatters the unit's gradient (fp32 sum over ranks) and adds it to the grad shards,
  // so micro-batches accumulate there.
  void after_backward(int unit) override;

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
  void gather(Unit& u);
  void reshard(Unit& u);
  void track(const Tensor& t, bool allocated);

  ProcessGroup& group_;
  ReshardPolicy options_;
  std::vector<Unit> units_;
  std::vector<float> scratch_;  // one parameter's reduced shard
  CommVolume volume_;
  size_t unsharded_bytes_ = 0, peak_unsharded_bytes_ = 0;
};

}  // namespace titan::parallel
