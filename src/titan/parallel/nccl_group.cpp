#include "titan/parallel/nccl_group.h"

#include <nccl.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "titan/core/dynamic_library.h"
#include "titan/core/error.h"
#include "titan/ops/cuda/cuda_check.h"
#include "titan/parallel/split_plan.h"

namespace titan::parallel {

namespace {
// The NCCL entry points titan uses, resolved from the loaded library.
struct NcclApi {
  decltype(&ncclGetUniqueId) get_unique_id;
  decltype(&ncclCommInitRank) comm_init_rank;
  decltype(&ncclCommDestroy) comm_destroy;
  decltype(&ncclCommAbort) comm_abort;
  decltype(&ncclCommGetAsyncError) comm_get_async_error;
  decltype(&ncclAllReduce) all_reduce;
  decltype(&ncclReduceScatter) reduce_scatter;
  decltype(&ncclAllGather) all_gather;
  decltype(&ncclBroadcast) broadcast;
  decltype(&ncclGroupStart) group_start;
  decltype(&ncclGroupEnd) group_end;
  decltype(&ncclGetErrorString) error_string;
};

NcclApi load_nccl() {
  const char* custom = std::getenv("TITAN_NCCL_LIBRARY");
  DynamicLibrary lib(custom && *custom ? custom : "libnccl.so.2", "FSDP on GPUs needs NCCL",
                     "install NCCL 2, or point LD_LIBRARY_PATH or TITAN_NCCL_LIBRARY at libnccl.so.2");
  const char* need = "NCCL 2.12 or newer is needed";
  NcclApi api;
  api.get_unique_id = lib.symbol<decltype(api.get_unique_id)>("ncclGetUniqueId", need);
  api.comm_init_rank = lib.symbol<decltype(api.comm_init_rank)>("ncclCommInitRank", need);
  api.comm_destroy = lib.symbol<decltype(api.comm_destroy)>("ncclCommDestroy", need);
  api.comm_abort = lib.symbol<decltype(api.comm_abort)>("ncclCommAbort", need);
  api.comm_get_async_error = lib.symbol<decltype(api.comm_get_async_error)>("ncclCommGetAsyncError", need);
  api.all_reduce = lib.symbol<decltype(api.all_reduce)>("ncclAllReduce", need);
  api.reduce_scatter = lib.symbol<decltype(api.reduce_scatter)>("ncclReduceScatter", need);
  api.all_gather = lib.symbol<decltype(api.all_gather)>("ncclAllGather", need);
  api.broadcast = lib.symbol<decltype(api.broadcast)>("ncclBroadcast", need);
  api.group_start = lib.symbol<decltype(api.group_start)>("ncclGroupStart", need);
  api.group_end = lib.symbol<decltype(api.group_end)>("ncclGroupEnd", need);
  api.error_string = lib.symbol<decltype(api.error_string)>("ncclGetErrorString", need);
  lib.keep();
  return api;
}

// Loaded once per process and never changed after (the library stays loaded).
const NcclApi& nccl() {
  static const NcclApi api = load_nccl();
  return api;
}

void check_nccl(ncclResult_t r, const char* what) {
  if (r != ncclSuccess) throw InternalError(concat(what, ": ", nccl().error_string(r)));
}

class NcclGroupImpl final : public NcclGroup {
 public:
  NcclGroupImpl(int rank, int world, const std::string& id, double timeout_seconds)
      : rank_(rank), world_(world), timeout_(timeout_seconds) {
    TITAN_CHECK(id.size() == sizeof(ncclUniqueId), "NCCL id of ", id.size(), " bytes");
    ncclUniqueId uid;
    std::memcpy(&uid, id.data(), sizeof uid);
    TITAN_CUDA_CHECK(cudaGetDevice(&device_));
    TITAN_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    try {
      check_nccl(nccl().comm_init_rank(&comm_, world, uid, rank), "ncclCommInitRank");
    } catch (...) {
      cudaStreamDestroy(stream_);
      throw;
    }
  }
  ~NcclGroupImpl() override {
    if (comm_) nccl().comm_destroy(comm_);
    if (scratch_) cudaFree(scratch_);
    if (pinned_) cudaFreeHost(pinned_);
    if (stream_) cudaStreamDestroy(stream_);
  }
  int rank() const override { return rank_; }
  int size() const override { return world_; }
  std::string backend() const override { return "nccl"; }

  // Device collectives (queued, not waited for).
  void all_gather_bf16(const cuda::bf16* send, cuda::bf16* recv, int64_t count, cudaStream_t stream) override {
    check_nccl(nccl().all_gather(send, recv, static_cast<size_t>(count), ncclBfloat16, comm_, stream), "ncclAllGather");
  }
  void reduce_scatter_f32(const float* send, float* recv, int64_t count, cudaStream_t stream) override {
    check_nccl(nccl().reduce_scatter(send, recv, static_cast<size_t>(count), ncclFloat32, ncclSum, comm_, stream),
               "ncclReduceScatter");
  }
  void reduce_scatter_bf16(const cuda::bf16* send, cuda::bf16* recv, int64_t count, cudaStream_t stream) override {
    check_nccl(nccl().reduce_scatter(send, recv, static_cast<size_t>(count), ncclBfloat16, ncclSum, comm_, stream),
               "ncclReduceScatter");
  }
  void all_gather_bytes(const void* send, void* recv, int64_t bytes, cudaStream_t stream) override {
    check_nccl(nccl().all_gather(send, recv, static_cast<size_t>(bytes), ncclUint8, comm_, stream), "ncclAllGather");
  }
  void all_reduce_max_f32(float* data, int64_t count, cudaStream_t stream) override {
    // As bits: NCCL's float max drops NaN (fmaxf); for non-negative floats the unsigned order is
    // the value order with NaN above inf.
    check_nccl(nccl().all_reduce(data, data, static_cast<size_t>(count), ncclUint32, ncclMax, comm_, stream),
               "ncclAllReduce");
  }
  void all_reduce_f32(float* data, int64_t count, cudaStream_t stream) override {
    check_nccl(nccl().all_reduce(data, data, static_cast<size_t>(count), ncclFloat32, ncclSum, comm_, stream),
               "ncclAllReduce");
  }
  void group_start() override { check_nccl(nccl().group_start(), "ncclGroupStart"); }
  void group_end() override { check_nccl(nccl().group_end(), "ncclGroupEnd"); }
  void synchronize(cudaStream_t stream) override { wait(stream, "a step's all-gathers and reduce-scatters"); }

  // Host collectives: staged through device memory and a pinned host buffer (a copy into
  // pageable memory would block until the collective ends, out of the timeout's reach).
  void all_reduce_sum(float* data, int64_t count) override { host_all_reduce(data, count, ncclFloat32); }
  void all_reduce_sum(double* data, int64_t count) override { host_all_reduce(data, count, ncclFloat64); }
  void all_gather(const float* send, float* recv, const std::vector<int64_t>& counts) override {
    TITAN_CHECK(static_cast<int>(counts.size()) == world_, "all_gather: ", counts.size(), " counts for ", world_, " ranks");
    const int64_t most = *std::max_element(counts.begin(), counts.end());  // NCCL gathers equal counts: pad
    float* dev = scratch<float>(most * (world_ + 1));
    float* host = pinned<float>(most * world_);
    std::fill_n(host, most, 0.0f);
    std::copy_n(send, counts[rank_], host);
    TITAN_CUDA_CHECK(cudaMemcpyAsync(dev, host, most * sizeof(float), cudaMemcpyHostToDevice, stream_));
    check_nccl(nccl().all_gather(dev, dev + most, most, ncclFloat32, comm_, stream_), "ncclAllGather");
    TITAN_CUDA_CHECK(cudaMemcpyAsync(host, dev + most, most * world_ * sizeof(float), cudaMemcpyDeviceToHost, stream_));
    wait(stream_, "an all-gather");
    int64_t at = 0;
    for (int r = 0; r < world_; ++r) {
      std::copy_n(host + most * r, counts[r], recv + at);
      at += counts[r];
    }
  }
  void reduce_scatter_sum(const float* send, float* recv, const std::vector<int64_t>& counts) override {
    TITAN_CHECK(static_cast<int>(counts.size()) == world_, "reduce_scatter: ", counts.size(), " counts for ", world_,
                " ranks");
    const int64_t most = *std::max_element(counts.begin(), counts.end());
    float* dev = scratch<float>(most * (world_ + 1));
    float* host = pinned<float>(most * world_);
    std::fill_n(host, most * world_, 0.0f);
    int64_t at = 0;
    for (int r = 0; r < world_; ++r) {
      std::copy_n(send + at, counts[r], host + most * r);
      at += counts[r];
    }
    TITAN_CUDA_CHECK(cudaMemcpyAsync(dev, host, most * world_ * sizeof(float), cudaMemcpyHostToDevice, stream_));
    check_nccl(nccl().reduce_scatter(dev, dev + most * world_, most, ncclFloat32, ncclSum, comm_, stream_),
               "ncclReduceScatter");
    TITAN_CUDA_CHECK(cudaMemcpyAsync(host, dev + most * world_, most * sizeof(float), cudaMemcpyDeviceToHost, stream_));
    wait(stream_, "a reduce-scatter");
    std::copy_n(host, counts[rank_], recv);
  }
  void broadcast(void* data, int64_t bytes, int root) override {
    char* dev = scratch<char>(bytes);
    char* host = pinned<char>(bytes);
    std::memcpy(host, data, static_cast<size_t>(bytes));
    TITAN_CUDA_CHECK(cudaMemcpyAsync(dev, host, bytes, cudaMemcpyHostToDevice, stream_));
    check_nccl(nccl().broadcast(dev, dev, bytes, ncclUint8, root, comm_, stream_), "ncclBroadcast");
    TITAN_CUDA_CHECK(cudaMemcpyAsync(host, dev, bytes, cudaMemcpyDeviceToHost, stream_));
    wait(stream_, "a broadcast");
    std::memcpy(data, host, static_cast<size_t>(bytes));
  }
  void barrier() override {
    float one = 1;
    all_reduce_sum(&one, 1);
  }
  // Without MPI to split with (a torchrun-style start): every rank's (color, key) meets over
  // this group, each color's lowest rank makes its sub-group's NCCL id, and the ids go out by
  // one broadcast per color, in color order, so every rank takes part in each.
  std::unique_ptr<ProcessGroup> split(int color, int key) override {
    TITAN_CUDA_CHECK(cudaSetDevice(device_));  // the sub-group's communicator on this group's GPU
    const int32_t mine[2] = {color, key};
    std::vector<int32_t> all(static_cast<size_t>(2 * world_));
    ProcessGroup::all_gather_bytes(reinterpret_cast<const uint8_t*>(mine), reinterpret_cast<uint8_t*>(all.data()),
                                   std::vector<int64_t>(static_cast<size_t>(world_), sizeof mine));
    const SplitPlan plan = plan_split(all, rank_);
    std::string id;
    for (size_t c = 0; c < plan.leaders.size(); ++c) {
      std::string sent = rank_ == plan.leaders[c] ? nccl_unique_id() : std::string(sizeof(ncclUniqueId), '\0');
      broadcast(sent.data(), static_cast<int64_t>(sent.size()), plan.leaders[c]);
      if (c == plan.mine) id = std::move(sent);
    }
    return make_nccl_group(plan.rank, plan.size, id, timeout_);
  }
  void abort(int exit_code) override {
    nccl().comm_abort(comm_);
    comm_ = nullptr;
    std::fflush(nullptr);
    std::_Exit(exit_code);  // the launcher (torchrun, mpirun) ends the other ranks
  }

 private:
  template <typename T>
  T* scratch(int64_t count) {
    const size_t bytes = static_cast<size_t>(std::max<int64_t>(count, 1)) * sizeof(T);
    if (bytes > scratch_bytes_) {
      TITAN_CUDA_CHECK(cudaStreamSynchronize(stream_));
      if (scratch_) TITAN_CUDA_CHECK(cudaFree(scratch_));
      TITAN_CUDA_CHECK(cudaMalloc(&scratch_, bytes));
      scratch_bytes_ = bytes;
    }
    return static_cast<T*>(scratch_);
  }
  template <typename T>
  T* pinned(int64_t count) {
    const size_t bytes = static_cast<size_t>(std::max<int64_t>(count, 1)) * sizeof(T);
    if (bytes > pinned_bytes_) {
      if (pinned_) TITAN_CUDA_CHECK(cudaFreeHost(pinned_));
      pinned_ = nullptr;
      TITAN_CUDA_CHECK(cudaMallocHost(&pinned_, bytes));
      pinned_bytes_ = bytes;
    }
    return static_cast<T*>(pinned_);
  }
  template <typename T>
  void host_all_reduce(T* data, int64_t count, ncclDataType_t type) {
    T* dev = scratch<T>(count);
    T* host = pinned<T>(count);
    std::copy_n(data, count, host);
    TITAN_CUDA_CHECK(cudaMemcpyAsync(dev, host, count * sizeof(T), cudaMemcpyHostToDevice, stream_));
    check_nccl(nccl().all_reduce(dev, dev, count, type, ncclSum, comm_, stream_), "ncclAllReduce");
    TITAN_CUDA_CHECK(cudaMemcpyAsync(host, dev, count * sizeof(T), cudaMemcpyDeviceToHost, stream_));
    wait(stream_, "an all-reduce");
    std::copy_n(host, count, data);
  }
  // Polls instead of blocking, so a dead or hung peer ends this rank after the timeout.
  void wait(cudaStream_t stream, const char* what) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_);
    for (int spins = 0;; ++spins) {
      const cudaError_t st = cudaStreamQuery(stream);
      if (st == cudaSuccess) return;
      if (st != cudaErrorNotReady) TITAN_CUDA_CHECK(st);
      ncclResult_t async = ncclSuccess;
      nccl().comm_get_async_error(comm_, &async);
      if (async != ncclSuccess) check_nccl(async, what);
      // Spin briefly (most waits are short), then sleep so a waiting rank does not hold a core.
      if (spins < 1000) std::this_thread::yield();
      else std::this_thread::sleep_for(std::chrono::microseconds(200));
      if (std::chrono::steady_clock::now() > deadline) {
        std::fprintf(stderr,
                     "titan: error: rank %d of %d: %s did not finish within %g s (comm.train_timeout_seconds): "
                     "another rank died or hangs\n",
                     rank_, world_, what, timeout_);
        abort(3);
      }
    }
  }

  int rank_, world_;
  double timeout_;
  int device_ = 0;
  cudaStream_t stream_ = nullptr;
  ncclComm_t comm_ = nullptr;
  void* scratch_ = nullptr;
  size_t scratch_bytes_ = 0;
  void* pinned_ = nullptr;
  size_t pinned_bytes_ = 0;
};
}  // namespace

std::string nccl_unique_id() {
  ncclUniqueId id;
  check_nccl(nccl().get_unique_id(&id), "ncclGetUniqueId");
  return std::string(reinterpret_cast<const char*>(&id), sizeof id);
}

std::unique_ptr<NcclGroup> make_nccl_group(int rank, int world, const std::string& unique_id, double timeout_seconds) {
  return std::make_unique<NcclGroupImpl>(rank, world, unique_id, timeout_seconds);
}

std::unique_ptr<NcclGroup> make_nccl_group(ProcessGroup& host, double timeout_seconds) {
  std::string id = host.rank() == 0 ? nccl_unique_id() : std::string(sizeof(ncclUniqueId), '\0');
  host.broadcast(id.data(), static_cast<int64_t>(id.size()), 0);
  return make_nccl_group(host.rank(), host.size(), id, timeout_seconds);
}

std::unique_ptr<NcclGroup> make_nccl_world(const LaunchEnv& env, double timeout_seconds) {
  const int count = cuda::device_count(), device = count == 1 ? 0 : env.local_rank;  // one visible: bound by the launcher
  if (count == 0 || device >= count)
    throw UserError(concat("started by torchrun-style variables: LOCAL_RANK=", env.local_rank, ", but ", count,
                           " CUDA devices are visible (that start runs over NCCL, one GPU per rank; on CPUs use mpirun)"));
  TITAN_CUDA_CHECK(cudaSetDevice(device));
  const std::string id = tcp_broadcast(env, env.rank == 0 ? nccl_unique_id() : "", timeout_seconds);
  if (id.size() != sizeof(ncclUniqueId))
    throw UserError(concat("rendezvous: rank ", env.rank, " received ", id.size(), " bytes from rank 0, expected an NCCL id"));
  return make_nccl_group(env.rank, env.world, id, timeout_seconds);
}

}  // namespace titan::parallel
