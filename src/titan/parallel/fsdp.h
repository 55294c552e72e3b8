// FSDP2's policy, written once for every backend: at the model's unit boundaries (the root:
// embedding, final norm and output; then each block) it decides when a unit's whole weights
// are gathered, prefetched and freed (ReshardPolicy, training.fsdp_reshard_after_forward), and
// when its whole gradient is made and reduce-scattered into this rank's gradient shards. How
// the bytes move is a UnitStore's job: host tensors over a ProcessGroup (MPI; host_unit_store.h)
// or device buffers over NCCL on a second stream (device_unit_store.h, CUDA builds). The model
// calls the hooks and never sees either.
#pragma once
#include "titan/core/module_hooks.h"
#include "titan/core/reshard_policy.h"

namespace titan::parallel {

// Bytes this rank moved, counted as a ring moves them: an all-gather or reduce-scatter of a
// tensor of T elements sends T - (own shard) elements per rank; an all-reduce twice that.
struct CommVolume {
  double all_gather = 0, reduce_scatter = 0, all_reduce = 0;
  double total() const { return all_gather + reduce_scatter + all_reduce; }
};

class UnitStore {
 public:
  virtual ~UnitStore() = default;
  virtual int units() const = 0;
  // Starts gathering unit u's whole weights; nothing when they are there or on their way.
  virtual void gather(int u) = 0;
  // From here on compute may read unit u's whole weights (gathers them if nobody asked yet).
  virtual void use(int u) = 0;
  // Frees unit u's whole weights.
  virtual void reshard(int u) = 0;
  // Unit u's whole gradient, zeroed, for its backward to add into.
  virtual void begin_gradients(int u) = 0;
  // Sums unit u's whole gradient over the ranks into this rank's gradient shards (+=, so
  // micro-batches accumulate), then frees it and the unit's whole weights.
  virtual void reduce_gradients(int u) = 0;
  // After the last unit's reduction: the gradient shards are complete for whoever reads them next.
  virtual void end_backward() {}
};

class FullyShardedDataParallel final : public ModuleHooks {
 public:
  // prefetch: gather the next unit while this one computes (stores whose collectives overlap
  // compute; the host store's are blocking, so it would only hold one more unit).
  FullyShardedDataParallel(UnitStore& store, ReshardPolicy policy, bool prefetch = false);
  void before_forward(int unit) override;
  void after_forward(int unit, bool backward_follows) override;
  void before_backward(int unit) override;
  void after_backward(int unit) override;

 private:
  // Whether a unit frees its weights after forward though backward follows.
  bool frees_after_forward(int unit) const;

  UnitStore& store_;
  ReshardPolicy policy_;
  bool prefetch_;
};

}  // namespace titan::parallel
