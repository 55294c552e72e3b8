#include "titan/parallel/device_unit_store.h"

#include <algorithm>
#include <exception>

#include "titan/core/error.h"
#include "titan/ops/cuda/cuda_check.h"
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
  return gathered_[u].as<bf16>() + unit_offset_[i];
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
  {
    CollectiveGroup group(collectives_);
    for (size_t i : units_[u]) {
      const int64_t shard = shards_.shard_elements(i);
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
