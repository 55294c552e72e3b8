#include "titan/parallel/data_parallel.h"

#include "titan/core/error.h"

namespace titan::parallel {

MeshShape resolve_mesh(int world, int64_t replicate_degree, int64_t shard_degree) {
  auto fail = [&](const std::string& what) {
    throw UserError(concat("training.data_parallel_replicate_degree = ", replicate_degree,
                           ", training.data_parallel_shard_degree = ", shard_degree, " on ", world, " ranks: ", what));
  };
  if (replicate_degree == 0 || replicate_degree < -1 || shard_degree == 0 || shard_degree < -1)
    fail("expected -1 or a positive integer for each");
  if (replicate_degree == -1 && shard_degree == -1) fail("at most one of them may be -1");
  int64_t r = replicate_degree, s = shard_degree;
  if (s == -1) {
    if (world % r != 0) fail(concat("the ranks do not divide into ", r, " replicas"));
    s = world / r;
  }
  if (r == -1) {
    if (world % s != 0) fail(concat("the ranks do not divide into shard groups of ", s));
    r = world / s;
  }
  if (r * s != world) fail(concat("replicate x shard = ", r * s, ", not the ", world, " ranks"));
  return {static_cast<int>(r), static_cast<int>(s)};
}

DataParallel::DataParallel(ProcessGroup& world, MeshShape mesh, ReshardPolicy fsdp) : mesh_(mesh) {
  TITAN_CHECK(mesh.replicate * mesh.shard == world.size(), "mesh ", mesh.replicate, " x ", mesh.shard, " for ",
              world.size(), " ranks");
  // Only a two-dimensional mesh needs sub-groups (NCCL's world, for one, cannot split yet).
  const int rank = world.rank();
  if (mesh.replicate == 1) {
    shard_group_ = &world;
  } else if (mesh.shard == 1) {
    replicate_group_ = &world;
  } else {
    own_shard_group_ = world.split(rank / mesh.shard, rank);
    own_replicate_group_ = world.split(rank % mesh.shard, rank);
    shard_group_ = own_shard_group_.get();
    replicate_group_ = own_replicate_group_.get();
  }
  if (!shard_group_) shard_group_ = (own_shard_group_ = make_local_group()).get();
  if (!replicate_group_) replicate_group_ = (own_replicate_group_ = make_local_group()).get();
  fsdp_options_ = fsdp;
}

void DataParallel::apply(llama3::Transformer& model, bool hooks) {
  const auto units = model.units();
  root_elements_ = block_elements_ = last_block_elements_ = 0;
  for (size_t u = 0; u < units.size(); ++u)
    for (const Parameter* p : units[u]) {
      (u == 0 ? root_elements_ : block_elements_) += p->numel();
      if (u > 0 && u + 1 == units.size()) last_block_elements_ += p->numel();
    }
  if (!sharded() || !hooks) return;
  units_ = std::make_unique<HostUnitStore>(units, *shard_group_);
  fsdp_ = std::make_unique<FullyShardedDataParallel>(*units_, fsdp_options_);
  model.set_hooks(fsdp_.get());
}

void DataParallel::reduce_gradients(std::deque<Parameter>& params) {
  if (mesh_.replicate == 1) return;
  const double share = 2.0 * (mesh_.replicate - 1) / mesh_.replicate;
  for (auto& p : params) {
    replicate_group_->all_reduce_sum(p.grad.f32(), p.grad.numel());
    replicate_volume_.all_reduce += share * 4.0 * static_cast<double>(p.grad.numel());
  }
}

double DataParallel::global_grad_sq(double local) {
  if (sharded()) shard_group_->all_reduce_sum(&local, 1);  // replicas hold equal shards: sum one copy
  return local;
}

CommVolume DataParallel::take_volume() {
  CommVolume v = replicate_volume_;
  replicate_volume_ = {};
  if (fsdp_) {
    v.all_gather += units_->volume().all_gather;
    v.reduce_scatter += units_->volume().reduce_scatter;
    units_->volume() = {};
  }
  return v;
}

double DataParallel::analytic_volume(int64_t micro_batches, double gather_bytes) const {
  const double s = mesh_.shard, r = mesh_.replicate, root = double(root_elements_), blocks = double(block_elements_);
  // (One forced FSDP rank moves nothing: (s - 1) / s = 0.)
  const double last = double(last_block_elements_);
  const double gathered = root * (fsdp_options_.reshard_root ? 2 : 1) +
                          (blocks - last) * (fsdp_options_.reshard_blocks ? 2 : 1) +
                          last * (fsdp_options_.reshard_last_block ? 2 : 1);
  const double fsdp = s > 1 ? (s - 1) / s * (gather_bytes * gathered + 4 * (root + blocks)) * double(micro_batches) : 0.0;
  const double replicate = 2.0 * (r - 1) / r * 4 * (root + blocks) / s;
  return fsdp + replicate;
}

std::string DataParallel::describe() const {
  if (mesh_.replicate * mesh_.shard == 1)
    return mesh_.force_fsdp ? "one rank, FSDP's gathers and reduce-scatters over it (training.fsdp_on_one_rank)" : "one rank";
  if (!sharded())
    return concat(mesh_.replicate, " ranks, replicated parameters (data_parallel_shard_degree = 1): gradients "
                                   "all-reduced once per step; each rank holds the whole model and optimizer state");
  std::string out = concat("FSDP: parameters, gradients and optimizer state sharded on dim 0 over ", mesh_.shard,
                           " ranks; each block (and the root) all-gathered just in time and its gradient "
                           "reduce-scattered in float32");
  if (mesh_.replicate > 1)
    out += concat("; HSDP: ", mesh_.replicate, " replicas of that, shard gradients all-reduced once per step");
  return out;
}

}  // namespace titan::parallel
