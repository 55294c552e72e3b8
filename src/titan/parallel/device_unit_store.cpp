#include "titan/parallel/device_unit_store.h"

#include <algorithm>
#include <exception>

#include "titan/core/error.h"
#include "titan/ops/cuda/cuda_check.h"
#include "titan/ops/cuda/float8_kernels.h"
#include "titan/ops/cuda/host_plan.h"

namespace titan::parallel {

namespace {
using cuda::bf16;
using cuda::DeviceBuffer;
using cuda::Phase;


// One NCCL group per unit, closed even when a call in it throws.
class CollectiveGroup {
 public:
  explicit CollectiveGroup(cuda::DeviceCollectives& c) : c_(c) { c_.group_start(); }
  ~CollectiveGroup() noexcept(false) {
    if (std::uncaught_exceptions() > 0) {
      try {
        c_.group_end();
      } catch (...) {
      }
      return;
    }
    c_.group_end();
  }
  CollectiveGroup(const CollectiveGroup&) = delete;
  CollectiveGroup& operator=(const CollectiveGroup&) = delete;

 private:
  cuda::DeviceCollectives& c_;
};
}  // namespace

DeviceUnitStore::DeviceUnitStore(std::vector<std::vector<size_t>> units, cuda::DeviceParameters& shards,
                                 cuda::DeviceCollectives& collectives, cuda::CudaBackend& backend)
    : units_(std::move(units)), shards_(shards), collectives_(collectives), backend_(backend),
      compute_(backend.stream()) {
  const int world = collectives.size();
  TITAN_CHECK(shards.world() == world && shards.rank() == collectives.rank(), "FSDP: the parameters are shards of rank ",
              shards.rank(), " of ", shards.world(), "; the collectives are rank ", collectives.rank(), " of ", world);
  size_t params = 0;
  for (const auto& u : units_) params += u.size();
  unit_of_.assign(params, 0);
  unit_offset_.assign(params, 0);
  reduced_offset_.assign(params, 0);
  size_t reduced_bytes = 0;
  for (size_t u = 0; u < units_.size(); ++u) {  // gathered layout: each parameter's world x shard, aligned
    int64_t elems = 0, reduced = 0;
    for (size_t i : units_[u]) {
      unit_of_[i] = u;
      unit_offset_[i] = elems;
      reduced_offset_[i] = reduced;
      elems += cuda::aligned_elements(world * shards.shard_elements(i));
      reduced += cuda::aligned_elements(shards.shard_elements(i));
    }
    unit_elems_.push_back(elems);
    reduced_bytes = std::max(reduced_bytes, static_cast<size_t>(reduced) * sizeof(float));
  }
  reduced_ = DeviceBuffer(backend.allocator(), reduced_bytes);
  gathered_.resize(units_.size());
  grads_.resize(units_.size());
  awaiting_.assign(units_.size(), false);
  TITAN_CUDA_CHECK(cudaStreamCreateWithFlags(&comm_, cudaStreamNonBlocking));
  TITAN_CUDA_CHECK(cudaEventCreateWithFlags(&compute_mark_, cudaEventDisableTiming));
  TITAN_CUDA_CHECK(cudaEventCreateWithFlags(&comm_mark_, cudaEventDisableTiming));
  for (size_t u = 0; u < units_.size(); ++u) {
    gathered_event_.push_back(nullptr);
    reduced_event_.push_back(nullptr);
    TITAN_CUDA_CHECK(cudaEventCreateWithFlags(&gathered_event_.back(), cudaEventDisableTiming));
    TITAN_CUDA_CHECK(cudaEventCreateWithFlags(&reduced_event_.back(), cudaEventDisableTiming));
  }
}

DeviceUnitStore::~DeviceUnitStore() {
  try {  // with the collectives' deadline: a peer that died must not hang this rank here
    compute_after_comm();
    collectives_.synchronize(compute_);
  } catch (...) {
  }
  gathered_.clear();
  grads_.clear();
  for (cudaEvent_t e : gathered_event_) cudaEventDestroy(e);
  for (cudaEvent_t e : reduced_event_) cudaEventDestroy(e);
  if (compute_mark_) cudaEventDestroy(compute_mark_);
  if (comm_mark_) cudaEventDestroy(comm_mark_);
  if (comm_) cudaStreamDestroy(comm_);
}

const void* DeviceUnitStore::weight(size_t i) {
  const size_t u = unit_of_.at(i);
  TITAN_CHECK(gathered_[u].bytes() > 0 && !awaiting_[u], "FSDP: weight ", i, " used while its unit ", u,
              " is not gathered, or its gather was not waited for");
  return gathered_[u].as<bf16>() + unit_offset_[i];  // an FP8-gathered weight's bytes start here too
}

// Slot layout of float8_scales_: the amaxes (rounded up to 8 floats), then per slot 8 floats:
// scale at 0, 1/scale at 4, each 16-byte aligned for cuBLASLt's scale pointers.
namespace {
int64_t amax_floats(int64_t slots) { return (slots + 7) / 8 * 8; }
}  // namespace

const float* DeviceUnitStore::float8_slot(size_t i, int which) {
  if (float8_slot_.empty() || float8_slot_.at(i) < 0) return nullptr;
  weight(i);  // the same checks: the unit is gathered and waited for, so are its scales
  return float8_scales_.as<float>() + amax_floats(float8_slots_) + 8 * float8_slot_[i] + (which == 1 ? 0 : 4);
}

const float* DeviceUnitStore::float8_scale(size_t i) { return float8_slot(i, 1); }
const float* DeviceUnitStore::float8_inv_scale(size_t i) { return float8_slot(i, 2); }

void DeviceUnitStore::enable_float8_gather(const std::vector<Float8Weight>& weights, bool precompute) {
  const size_t n = unit_of_.size();
  float8_slot_.assign(n, -1);
  float8_cols_.assign(n, 0);
  send_offset_.assign(n, 0);
  float8_slots_ = 0;
  for (const auto& w : weights) {
    TITAN_CHECK(w.index < n && w.cols > 0 && shards_.shard_elements(w.index) % w.cols == 0, "FP8 all-gather: parameter ",
                w.index, " of ", n, " with rows of ", w.cols, " elements");
    float8_slot_[w.index] = float8_slots_++;
    float8_cols_[w.index] = w.cols;
  }
  int64_t send_bytes = 0;  // the largest unit's e4m3 shards, each 256-byte aligned
  for (const auto& unit : units_) {
    int64_t bytes = 0;
    for (size_t i : unit)
      if (float8_slot_[i] >= 0) {
        send_offset_[i] = bytes;
        bytes += (shards_.shard_elements(i) + 255) / 256 * 256;
      }
    send_bytes = std::max(send_bytes, bytes);
  }
  float8_scales_ = DeviceBuffer(backend_.allocator(), sizeof(float) * static_cast<size_t>(amax_floats(float8_slots_) +
                                                                                          8 * std::max<int64_t>(float8_slots_, 1)));
  float8_send_ = DeviceBuffer(backend_.allocator(), static_cast<size_t>(std::max<int64_t>(send_bytes, 1)));
  precompute_ = precompute;
  scales_valid_ = false;
}

void DeviceUnitStore::amax_of_shard(size_t i, float* amax) {
  const int64_t cols = float8_cols_[i];
  cuda::float8_amax(shards_.masters() + shards_.offset(i), shards_.shard_elements(i) / cols, cols, cuda::ScaleSpan::tensor,
                    amax, comm_);  // the padding rows are zero: no amax of theirs
}

// Scales from the fp32 master shards' amax, the max over the ranks: every rank casts its shard
// with the scale a whole-tensor cast would use, so the gathered bytes are the whole weight's
// cast. (torchao reduces the same amax; it computes the scale in fp64 as scales_kernel does.)
void DeviceUnitStore::float8_scales_for(size_t u) {
  float* amax = float8_scales_.as<float>();
  float* scales = amax + amax_floats(float8_slots_);
  const auto others = static_cast<double>(collectives_.size() - 1);
  if (precompute_) {
    if (scales_valid_) return;
    for (size_t i = 0; i < float8_slot_.size(); ++i)
      if (float8_slot_[i] >= 0) amax_of_shard(i, amax + float8_slot_[i]);
    collectives_.all_reduce_max_f32(amax, float8_slots_, comm_);
    comm_bytes_ += 4.0 * others * static_cast<double>(float8_slots_);  // counted as the CPU store counts it
    ++amax_reductions_;
    cuda::float8_scales(amax, float8_slots_, float8::Format::e4m3, false, scales, scales + 4, comm_, 8);
    scales_valid_ = true;
    return;
  }
  for (size_t i : units_[u]) {
    const int64_t slot = float8_slot_[i];
    if (slot < 0) continue;
    amax_of_shard(i, amax + slot);
    collectives_.all_reduce_max_f32(amax + slot, 1, comm_);
    comm_bytes_ += 4.0 * others;
    ++amax_reductions_;
    cuda::float8_scales(amax + slot, 1, float8::Format::e4m3, false, scales + 8 * slot, scales + 8 * slot + 4, comm_);
  }
}

float* DeviceUnitStore::grad(size_t i) {
  const size_t u = unit_of_.at(i);
  TITAN_CHECK(grads_[u].bytes() > 0, "FSDP: gradient ", i, " used outside its unit's backward");
  return grads_[u].as<float>() + unit_offset_[i];
}

void DeviceUnitStore::track(size_t bytes, bool allocated) {
  unsharded_ = allocated ? unsharded_ + bytes : unsharded_ - bytes;
  peak_unsharded_ = std::max(peak_unsharded_, unsharded_);
}

// The comm stream waits for everything queued on the compute stream so far: the weights it
// sends are final and any buffer it is about to fill is no longer read.
void DeviceUnitStore::comm_after_compute() {
  TITAN_CUDA_CHECK(cudaEventRecord(compute_mark_, compute_));
  TITAN_CUDA_CHECK(cudaStreamWaitEvent(comm_, compute_mark_, 0));
}

void DeviceUnitStore::compute_after_comm() {
  backend_.mark(Phase::communication);
  TITAN_CUDA_CHECK(cudaEventRecord(comm_mark_, comm_));
  TITAN_CUDA_CHECK(cudaStreamWaitEvent(compute_, comm_mark_, 0));
}

void DeviceUnitStore::gather(int unit) {
  const auto u = static_cast<size_t>(unit);
  if (gathered_.at(u).bytes() > 0) return;
  gathered_[u] = DeviceBuffer(backend_.allocator(), static_cast<size_t>(unit_elems_[u]) * sizeof(bf16));
  track(gathered_[u].bytes(), true);
  comm_after_compute();
  const bool float8 = std::any_of(units_[u].begin(), units_[u].end(),
                                  [&](size_t i) { return !float8_slot_.empty() && float8_slot_[i] >= 0; });
  if (float8) {  // amaxes reduced and the shards cast before the group: NCCL runs a group's calls at its end
    float8_scales_for(u);
    const float* scales = float8_scales_.as<float>() + amax_floats(float8_slots_);
    for (size_t i : units_[u])
      if (float8_slot_[i] >= 0) {
        const int64_t cols = float8_cols_[i];
        cuda::float8_cast(shards_.masters() + shards_.offset(i), shards_.shard_elements(i) / cols, cols,
                          scales + 8 * float8_slot_[i], cuda::ScaleSpan::tensor, float8::Format::e4m3,
                          float8_send_.as<uint8_t>() + send_offset_[i], nullptr, comm_);
      }
  }
  {
    CollectiveGroup group(collectives_);
    for (size_t i : units_[u]) {
      const int64_t shard = shards_.shard_elements(i);
      if (float8 && float8_slot_[i] >= 0) {  // one byte an element; the gathered [rows, cols] e4m3 weight
        collectives_.all_gather_bytes(float8_send_.as<uint8_t>() + send_offset_[i], gathered_[u].as<bf16>() + unit_offset_[i],
                                      shard, comm_);
        comm_bytes_ += static_cast<double>((collectives_.size() - 1) * shard);
        continue;
      }
      collectives_.all_gather_bf16(shards_.weights_bf16() + shards_.offset(i), gathered_[u].as<bf16>() + unit_offset_[i],
                                   shard, comm_);
      comm_bytes_ += 2.0 * static_cast<double>((collectives_.size() - 1) * shard);
    }
  }
  TITAN_CUDA_CHECK(cudaEventRecord(gathered_event_[u], comm_));
  awaiting_[u] = true;
}

void DeviceUnitStore::use(int unit) {
  const auto u = static_cast<size_t>(unit);
  gather(unit);  // unless prefetched
  if (!awaiting_[u]) return;
  backend_.mark(Phase::communication);  // until the next op's mark: time compute waits for this gather
  TITAN_CUDA_CHECK(cudaStreamWaitEvent(compute_, gathered_event_[u], 0));
  awaiting_[u] = false;
}

void DeviceUnitStore::reshard(int unit) {
  const auto u = static_cast<size_t>(unit);
  if (gathered_.at(u).bytes() == 0) return;
  use(unit);  // a gather still in flight must land before its buffer can be handed out again
  track(gathered_[u].bytes(), false);
  gathered_[u] = DeviceBuffer();  // back to the cache; later users on either stream are ordered after this point
}

void DeviceUnitStore::begin_gradients(int unit) {
  const auto u = static_cast<size_t>(unit);
  TITAN_CHECK(grads_.at(u).bytes() == 0, "FSDP: unit ", unit, " entered backward twice");
  grads_[u] = DeviceBuffer(backend_.allocator(), static_cast<size_t>(unit_elems_[u]) * sizeof(float));
  track(grads_[u].bytes(), true);
  TITAN_CUDA_CHECK(cudaMemsetAsync(grads_[u].as<void>(), 0, grads_[u].bytes(), compute_));  // padding too
}

void DeviceUnitStore::reduce_gradients(int unit) {
  const auto u = static_cast<size_t>(unit);
  TITAN_CHECK(grads_.at(u).bytes() > 0, "FSDP: unit ", unit, " left a backward it did not enter");
  retire_reduced();  // the previous unit's reduce-scatter has had this unit's backward to run
  comm_after_compute();
  {
    CollectiveGroup group(collectives_);
    for (size_t i : units_[u]) {
      const int64_t shard = shards_.shard_elements(i);
      collectives_.reduce_scatter_f32(grads_[u].as<float>() + unit_offset_[i], reduced_.as<float>() + reduced_offset_[i],
                                      shard, comm_);
      comm_bytes_ += 4.0 * static_cast<double>((collectives_.size() - 1) * shard);
    }
  }
  for (size_t i : units_[u])
    cuda::accumulate_f32(shards_.gradients() + shards_.offset(i), reduced_.as<float>() + reduced_offset_[i],
                         shards_.shard_elements(i), comm_);
  TITAN_CUDA_CHECK(cudaEventRecord(reduced_event_[u], comm_));
  reducing_.push_back(u);
  reshard(unit);
}

// The compute stream waits for the reduce-scatters issued so far (and their additions into the
// gradient shards); then their whole-gradient buffers can be handed out again.
void DeviceUnitStore::retire_reduced() {
  if (!reducing_.empty()) backend_.mark(Phase::communication);
  for (size_t v : reducing_) {
    TITAN_CUDA_CHECK(cudaStreamWaitEvent(compute_, reduced_event_[v], 0));
    track(grads_[v].bytes(), false);
    grads_[v] = DeviceBuffer();
  }
  reducing_.clear();
}

void DeviceUnitStore::release_all() {
  compute_after_comm();  // whatever comm_ still does to these buffers comes first
  reducing_.clear();
  for (size_t u = 0; u < gathered_.size(); ++u) {
    awaiting_[u] = false;
    if (grads_[u].bytes() > 0) {
      track(grads_[u].bytes(), false);
      grads_[u] = DeviceBuffer();
    }
    reshard(static_cast<int>(u));
  }
}

void DeviceUnitStore::synchronize() {
  compute_after_comm();  // nothing on comm_ is left unwaited
  collectives_.synchronize(compute_);
}

double DeviceUnitStore::take_comm_bytes() {
  const double b = comm_bytes_;
  comm_bytes_ = 0;
  return b;
}

}  // namespace titan::parallel
