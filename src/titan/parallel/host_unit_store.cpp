#include "titan/parallel/host_unit_store.h"

#include <algorithm>
#include <cmath>

#include "titan/core/error.h"
#include "titan/ops/float8.h"

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

void HostUnitStore::enable_float8_gather(const std::vector<const Parameter*>& weights, bool precompute) {
  precompute_ = precompute;
  size_t largest_shard = 0, largest = 0;
  for (const Parameter* p : weights) {
    float8_.emplace(p, float8_.size());
    largest_shard = std::max(largest_shard, static_cast<size_t>(p->master.numel()));
    largest = std::max(largest, static_cast<size_t>(p->numel()));
  }
  float8_scales_.assign(float8_.size(), 0.0f);
  send_bytes_.assign(largest_shard, 0);
  gathered_bytes_.assign(largest, 0);
  scales_valid_ = false;
}

namespace {
float shard_amax(const Parameter& p) {
  const float* w = p.master.f32();
  float m = 0;
  for (int64_t i = 0; i < p.master.numel(); ++i) {
    const float a = std::fabs(w[i]);
    if (std::isnan(a)) return a;  // NaN wins, as torch.max
    m = std::max(m, a);
  }
  return m;
}

float weight_scale(float amax) { return float8::scale_from_amax(amax, float8::Format::e4m3, false); }
}  // namespace

// The tensorwise scale p is gathered with. An amax all-reduce of k floats is counted as
// ProcessGroup::all_reduce_max moves it: an all-gather of k floats from each rank.
float HostUnitStore::float8_scale(const Parameter& p) {
  const double others = group_.size() - 1;
  if (!precompute_) {  // torchao's default: this weight's amax, reduced as it is cast
    float amax = shard_amax(p);
    group_.all_reduce_max(&amax, 1);
    ++amax_reductions_;
    volume_.all_reduce += 4.0 * others;
    return weight_scale(amax);
  }
  if (!scales_valid_) {  // one pass over every FP8 weight shard, one all-reduce for all of them
    std::vector<float> amax(float8_.size());
    for (const auto& [q, i] : float8_) amax[i] = shard_amax(*q);
    group_.all_reduce_max(amax.data(), static_cast<int64_t>(amax.size()));
    ++amax_reductions_;
    volume_.all_reduce += 4.0 * others * static_cast<double>(amax.size());
    for (size_t i = 0; i < amax.size(); ++i) float8_scales_[i] = weight_scale(amax[i]);
    scales_valid_ = true;
  }
  return float8_scales_[float8_.at(&p)];
}

// The shard cast to e4m3 (as the emulated linear would cast the whole weight: the same scale,
// elementwise), gathered at one byte an element, and dequantised into the whole weight.
void HostUnitStore::gather_float8(Parameter& p, const std::vector<int64_t>& counts) {
  const float scale = float8_scale(p);
  const float* w = p.master.f32();
  const int64_t local = p.master.numel();
  for (int64_t i = 0; i < local; ++i) send_bytes_[static_cast<size_t>(i)] = float8::encode(w[i] * scale, float8::Format::e4m3);
  group_.all_gather_bytes(send_bytes_.data(), gathered_bytes_.data(), counts);
  volume_.all_gather += static_cast<double>(p.numel() - local);
  float* full = p.full.f32();
  for (int64_t i = 0; i < p.numel(); ++i)
    full[i] = float8::decode(gathered_bytes_[static_cast<size_t>(i)], float8::Format::e4m3) / scale;
  p.full_float8_scale = scale;
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
    if (float8_.count(&p)) {
      gather_float8(p, u.counts[i]);
      continue;
    }
    group_.all_gather(p.master.f32(), p.full.f32(), u.counts[i]);
    volume_.all_gather += 4.0 * static_cast<double>(p.numel() - p.master.numel());
  }
}

void HostUnitStore::reshard(int index) {
  Unit& u = unit(index);
  if (!u.weights.defined()) return;
  for (Parameter* p : u.params) {
    p->full = Tensor();
    p->full_float8_scale = 0;
  }
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
