#include "titan/parallel/host_unit_store.h"

#include <algorithm>

#include "titan/core/error.h"

namespace titan::parallel {

HostUnitStore::HostUnitStore(std::vector<std::vector<Parameter*>> units, ProcessGroup& group) : group_(group) {
  const int world = group.size();
  size_t largest_shard = 0;
  for (auto& params : units) {
    Unit u;
    for (Parameter* p : params) {
      TITAN_CHECK(p->world == world && p->rank == group.rank(), p->name, " is a shard of rank ", p->rank, " of ",
                  p->world, ", the group is rank ", group.rank(), " of ", world);
      std::vector<int64_t> counts;
      for (int r = 0; r < world; ++r) counts.push_back(shard_range(p->global_shape[0], r, world).rows() * p->row_elems());
      largest_shard = std::max(largest_shard, static_cast<size_t>(p->master.numel()));
      u.elements += p->numel();
      u.counts.push_back(std::move(counts));
      p->full = Tensor();  // from now on only between a gather and a reshard
      p->full_grad = Tensor();
    }
    u.params = std::move(params);
    units_.push_back(std::move(u));
  }
  scratch_.resize(largest_shard);
}

HostUnitStore::Unit& HostUnitStore::unit(int index) {
  TITAN_CHECK(index >= 0 && index < static_cast<int>(units_.size()), "FSDP: no unit ", index, " of ", units_.size());
  return units_[static_cast<size_t>(index)];
}

void HostUnitStore::track(const Tensor& t, bool allocated) {
  if (allocated) {
    unsharded_bytes_ += t.bytes();
    peak_unsharded_bytes_ = std::max(peak_unsharded_bytes_, unsharded_bytes_);
  } else {
    unsharded_bytes_ -= t.bytes();
  }
}

void HostUnitStore::gather(int index) {
  Unit& u = unit(index);
  if (u.weights.defined()) return;
  u.weights = Tensor::zeros({u.elements});
  track(u.weights, true);
  int64_t offset = 0;
  for (size_t i = 0; i < u.params.size(); ++i) {
    Parameter& p = *u.params[i];
    p.full = Tensor::view_of(u.weights, p.global_shape, offset);
    offset += p.numel();
    group_.all_gather(p.master.f32(), p.full.f32(), u.counts[i]);
    volume_.all_gather += 4.0 * static_cast<double>(p.numel() - p.master.numel());
  }
}

void HostUnitStore::reshard(int index) {
  Unit& u = unit(index);
  if (!u.weights.defined()) return;
  for (Parameter* p : u.params) p->full = Tensor();
  track(u.weights, false);
  u.weights = Tensor();
}

void HostUnitStore::begin_gradients(int index) {
  Unit& u = unit(index);
  TITAN_CHECK(!u.grads.defined(), "FSDP: unit ", index, " entered backward twice");
  u.grads = Tensor::zeros({u.elements});  // backward accumulates into it
  track(u.grads, true);
  int64_t offset = 0;
  for (Parameter* p : u.params) {
    p->full_grad = Tensor::view_of(u.grads, p->global_shape, offset);
    offset += p->numel();
  }
}

void HostUnitStore::reduce_gradients(int index) {
  Unit& u = unit(index);
  TITAN_CHECK(u.grads.defined(), "FSDP: unit ", index, " left a backward it did not enter");
  for (size_t i = 0; i < u.params.size(); ++i) {
    Parameter& p = *u.params[i];
    const int64_t local = p.grad.numel();
    group_.reduce_scatter_sum(p.full_grad.f32(), scratch_.data(), u.counts[i]);
    volume_.reduce_scatter += 4.0 * static_cast<double>(p.numel() - local);
    float* g = p.grad.f32();
    for (int64_t j = 0; j < local; ++j) g[j] += scratch_[static_cast<size_t>(j)];
    p.full_grad = Tensor();
  }
  track(u.grads, false);
  u.grads = Tensor();
  reshard(index);
}

}  // namespace titan::parallel
