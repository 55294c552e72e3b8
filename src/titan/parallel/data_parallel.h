// Data parallelism applied to a model from outside, as torchtitan's parallelize step does: the
// ranks form a replicate x shard mesh (data_parallel_replicate_degree x
// data_parallel_shard_degree). Within a shard group parameters are sharded (FSDP); across
// replicate groups the shards are replicas whose gradients are summed (HSDP; shard degree 1
// is plain replicated data parallelism).
#pragma once
#include <deque>
#include <memory>
#include <string>

#include "titan/models/llama3/transformer.h"
#include "titan/parallel/fsdp.h"
#include "titan/parallel/host_unit_store.h"
#include "titan/parallel/process_group.h"

namespace titan::parallel {

struct MeshShape {
  int replicate = 1, shard = 1;
  // FSDP's gathers and reduce-scatters even over one rank (training.fsdp_on_one_rank: every
  // path of a sharded run, on one device).
  bool force_fsdp = false;
};

// The mesh for `world` ranks from the two degrees (-1: the ranks the other leaves). UserError
// naming the keys when they do not multiply to the world.
MeshShape resolve_mesh(int world, int64_t replicate_degree, int64_t shard_degree);

class DataParallel {
 public:
  // Splits `world` into the mesh's groups (every rank must construct it).
  DataParallel(ProcessGroup& world, MeshShape mesh, ReshardPolicy fsdp);
  const MeshShape& mesh() const { return mesh_; }
  bool sharded() const { return mesh_.shard > 1 || mesh_.force_fsdp; }
  // The group parameters are sharded over (the world without replicas; one rank without FSDP).
  ProcessGroup& shard_group() { return *shard_group_; }
  // This rank's place: its shard (parameters are shards `shard_rank` of `mesh().shard`) and
  // its replica. Ranks are laid out shard-major: rank = replica x shard degree + shard rank.
  int shard_rank() const { return shard_group_->rank(); }
  int replica() const { return replicate_group_->rank(); }
  // The group of this rank's replicas (the same shard on each; a group of one without HSDP).
  ProcessGroup& replicate_group() { return *replicate_group_; }
  // Replica 0 writes the checkpoint: one rank file per shard.
  bool saves_checkpoint() const { return replica() == 0; }

  // Wraps the model (built with shards of shard_rank() of mesh().shard) in FSDP when sharded
  // and `hooks` (the CPU engine computes with this model; a GPU engine shards its own copy).
  void apply(llama3::Transformer& model, bool hooks);
  // After a step's micro-batches: sums the grad shards over the replicas (one all-reduce per
  // step; FSDP has already reduce-scattered within the shard group).
  void reduce_gradients(std::deque<Parameter>& params);
  // The global squared gradient norm from this rank's shards.
  double global_grad_sq(double local);
  // Communication since the last call, this rank (bytes).
  CommVolume take_volume();
  // Bytes per rank per step, mean over the ranks, from the schedule (after apply): per
  // micro-batch (W-1)/W x (gather bytes x gathered + 4 x reduced elements), where a unit that
  // reshards after forward is gathered twice; plus, across R replicas, 2 (R-1)/R x 4 bytes x
  // the shard once per step. With every unit resharding ("always") this is REFERENCE.md's
  // (W-1)/W x P x (4 + 4 + 4) with float32 gathers (the CPU computes in float32). Under FP8
  // all-gather the float8 weights gather at one byte an element, and their amaxes add
  // (W-1) x 4 bytes per weight: once per step with precompute, else at each of their gathers.
  double analytic_volume(int64_t micro_batches, double gather_bytes = 4) const;
  // FP8 all-gather for these weights (float8 linears; HostUnitStore::enable_float8_gather).
  // Nothing without FSDP's host store (one rank, or a GPU engine that shards its own copy).
  void enable_float8_all_gather(const std::vector<const Parameter*>& weights, bool precompute);
  // After the optimizer step: FP8-gathered weights take new scales at their next gather.
  void weights_changed() {
    if (units_) units_->weights_changed();
  }
  int64_t float8_amax_reductions() const { return units_ ? units_->float8_amax_reductions() : 0; }
  // Peak bytes of whole (gathered) weights and gradients so far; 0 without FSDP.
  size_t peak_unsharded_bytes() const { return units_ ? units_->peak_unsharded_bytes() : 0; }
  std::string describe() const;

 private:
  MeshShape mesh_;
  std::unique_ptr<ProcessGroup> own_shard_group_, own_replicate_group_;  // made when the mesh needs them
  ProcessGroup* shard_group_ = nullptr;
  ProcessGroup* replicate_group_ = nullptr;
  ReshardPolicy fsdp_options_;
  // Per unit (set by apply): elements, and elements and weights gathered in FP8.
  std::vector<int64_t> unit_elements_, unit_float8_elements_, unit_float8_weights_;
  std::vector<std::vector<const Parameter*>> unit_params_;
  bool precompute_float8_ = false;
  std::unique_ptr<HostUnitStore> units_;
  std::unique_ptr<FullyShardedDataParallel> fsdp_;
  CommVolume replicate_volume_;
};

}  // namespace titan::parallel
