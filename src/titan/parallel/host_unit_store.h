// FSDP's units on the host: each parameter keeps only its dim-0 shard on this rank (fp32
// master, grad, AdamW moments: 1/N of the model); a unit's whole weights exist from its
// all-gather until it reshards, and its whole gradient only during its own backward, which
// ends in a reduce-scatter into the grad shards. The whole tensors are what each Parameter's
// `full` and `full_grad` view, so the CPU model reads them through ParameterWeights.
#pragma once
#include <cstddef>
#include <cstdint>
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

  ProcessGroup& group_;
  std::vector<Unit> units_;
  std::vector<float> scratch_;  // one parameter's reduced shard
  CommVolume volume_;
  size_t unsharded_bytes_ = 0, peak_unsharded_bytes_ = 0;
};

}  // namespace titan::parallel
