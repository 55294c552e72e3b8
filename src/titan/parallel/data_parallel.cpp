#include "titan/parallel/data_parallel.h"

#include <algorithm>

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
  // Only a two-dimensional mesh needs sub-groups.
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
  unit_elements_.assign(units.size(), 0);
  unit_float8_elements_.assign(units.size(), 0);
  unit_float8_weights_.assign(units.size(), 0);
  unit_params_.assign(units.size(), {});
  for (size_t u = 0; u < units.size(); ++u)
    for (const Parameter* p : units[u]) {
      unit_elements_[u] += p->numel();
      unit_params_[u].push_back(p);
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
    v.all_reduce += units_->volume().all_reduce;
    units_->volume() = {};
  }
  return v;
}

void DataParallel::enable_float8_all_gather(const std::vector<const Parameter*>& weights, bool precompute) {
  // Counted for the analytic traffic whichever store gathers (a GPU engine's device store does).
  if (units_) units_->enable_float8_gather(weights, precompute);
  precompute_float8_ = precompute;
  for (size_t u = 0; u < unit_params_.size(); ++u)
    for (const Parameter* p : unit_params_[u])
      if (std::find(weights.begin(), weights.end(), p) != weights.end()) {
        unit_float8_elements_[u] += p->numel();
        ++unit_float8_weights_[u];
      }
}

double DataParallel::analytic_volume(int64_t micro_batches, double gather_bytes) const {
  const double s = mesh_.shard, r = mesh_.replicate;
  // (One forced FSDP rank moves nothing: (s - 1) / s = 0.)
  double gathered = 0, elements = 0, amaxes = 0, float8_weights = 0;
  const size_t n = unit_elements_.size();
  for (size_t u = 0; u < n; ++u) {
    const bool reshards = u == 0 ? fsdp_options_.reshard_root : u + 1 == n ? fsdp_options_.reshard_last_block
                                                                           : fsdp_options_.reshard_blocks;
    const double times = reshards ? 2 : 1, f8 = double(unit_float8_elements_[u]);
    gathered += times * (gather_bytes * (double(unit_elements_[u]) - f8) + f8);
    amaxes += times * double(unit_float8_weights_[u]);
    float8_weights += double(unit_float8_weights_[u]);
    elements += double(unit_elements_[u]);
  }
  const double per_micro = (gathered + 4 * elements) * (s - 1) / s + (precompute_float8_ ? 0.0 : 4 * (s - 1) * amaxes);
  const double fsdp = s > 1 ? per_micro * double(micro_batches) + (precompute_float8_ ? 4 * (s - 1) * float8_weights : 0.0)
                            : 0.0;
  const double replicate = 2.0 * (r - 1) / r * 4 * elements / s;
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
