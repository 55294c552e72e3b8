#include "titan/parallel/process_group.h"

#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <mutex>
#include <thread>

#include "titan/core/error.h"
#include "titan/parallel/launch_env.h"
#ifdef TITAN_WITH_CUDA
#include "titan/parallel/nccl_group.h"
#endif

namespace titan::parallel {

void ProcessGroup::all_gather_bytes(const uint8_t* send, uint8_t* recv, const std::vector<int64_t>& counts) {
  TITAN_CHECK(static_cast<int>(counts.size()) == size(), "all_gather: ", counts.size(), " counts for ", size(), " ranks");
  const int64_t most = *std::max_element(counts.begin(), counts.end());
  if (most == 0) return;
  const int64_t floats = (most + 3) / 4;  // each rank's bytes padded to a whole number of floats
  std::vector<float> out(static_cast<size_t>(floats)), in(static_cast<size_t>(floats * size()));
  std::memcpy(out.data(), send, static_cast<size_t>(counts[static_cast<size_t>(rank())]));
  all_gather(out.data(), in.data(), std::vector<int64_t>(counts.size(), floats));
  int64_t at = 0;
  for (size_t r = 0; r < counts.size(); ++r) {
    std::memcpy(recv + at, reinterpret_cast<const uint8_t*>(in.data() + static_cast<int64_t>(r) * floats),
                static_cast<size_t>(counts[r]));
    at += counts[r];
  }
}

void ProcessGroup::all_reduce_max(float* data, int64_t count) {
  if (size() == 1 || count == 0) return;
  std::vector<float> all(static_cast<size_t>(count * size()));
  all_gather(data, all.data(), std::vector<int64_t>(static_cast<size_t>(size()), count));
  for (int64_t i = 0; i < count; ++i) {
    float m = all[static_cast<size_t>(i)];
    for (int r = 1; r < size() && !std::isnan(m); ++r) {
      const float v = all[static_cast<size_t>(r * count + i)];
      m = std::isnan(v) ? v : std::max(m, v);  // NaN wins, as torch.max
    }
    data[i] = m;
  }
}

namespace {
class LocalGroup final : public ProcessGroup {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string backend() const override { return "local"; }
  void all_reduce_sum(float*, int64_t) override {}
  void all_reduce_sum(double*, int64_t) override {}
  void all_gather(const float* send, float* recv, const std::vector<int64_t>& counts) override {
    TITAN_CHECK(counts.size() == 1, "all_gather: ", counts.size(), " counts for a group of 1");
    std::copy_n(send, counts[0], recv);
  }
  void reduce_scatter_sum(const float* send, float* recv, const std::vector<int64_t>& counts) override {
    TITAN_CHECK(counts.size() == 1, "reduce_scatter: ", counts.size(), " counts for a group of 1");
    std::copy_n(send, counts[0], recv);
  }
  void broadcast(void*, int64_t, int root) override { TITAN_CHECK(root == 0, "broadcast from rank ", root, " of 1"); }
  void barrier() override {}
  std::unique_ptr<ProcessGroup> split(int, int) override { return std::make_unique<LocalGroup>(); }
  void abort(int) override {}
};

void check_mpi(int status, const char* what) {
  if (status != MPI_SUCCESS) {
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(status, text, &len);
    throw InternalError(concat(what, ": ", std::string(text, static_cast<size_t>(len))));
  }
}

// Ends the process when a collective outlives its deadline. It cannot call MPI itself (MPI is
// initialised for the main thread only), so it exits: the launcher then ends the other ranks.
class Watchdog {
 public:
  Watchdog(double seconds, int rank, int size) : seconds_(seconds), rank_(rank), size_(size), thread_([this] { loop(); }) {}
  ~Watchdog() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  void arm(const char* what) {
    std::lock_guard<std::mutex> lock(mu_);
    what_ = what;
    deadline_ = std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                                       std::chrono::duration<double>(seconds_));
    armed_ = true;
    cv_.notify_all();
  }
  void disarm() {
    std::lock_guard<std::mutex> lock(mu_);
    armed_ = false;
  }

 private:
  void loop() {
    std::unique_lock<std::mutex> lock(mu_);
    while (!done_) {
      if (!armed_) {
        cv_.wait(lock);
        continue;
      }
      if (cv_.wait_until(lock, deadline_) == std::cv_status::timeout && armed_ && !done_ &&
          std::chrono::steady_clock::now() >= deadline_) {
        std::fprintf(stderr,
                     "titan: error: rank %d of %d: %s did not finish within %g s (comm.train_timeout_seconds): "
                     "another rank died or hangs\n",
                     rank_, size_, what_, seconds_);
        std::fflush(stderr);
        std::_Exit(3);
      }
    }
  }
  double seconds_;
  int rank_, size_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool armed_ = false, done_ = false;
  const char* what_ = "";
  std::chrono::steady_clock::time_point deadline_;
  std::thread thread_;
};

// MPI counts and displacements are int: larger tensors are refused with their size named.
int mpi_count(int64_t n, const char* what) {
  if (n < 0 || n > std::numeric_limits<int>::max())
    throw UserError(concat(what, ": ", n, " elements is more than one MPI collective can move (2^31 - 1)"));
  return static_cast<int>(n);
}

class MpiGroup final : public ProcessGroup {
 public:
  // The world: initialises MPI (finalised when this group goes).
  explicit MpiGroup(double timeout_seconds) : comm_(MPI_COMM_WORLD), owns_mpi_(true) {
    int provided = 0;
    check_mpi(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
    check_mpi(MPI_Comm_rank(MPI_COMM_WORLD, &rank_), "MPI_Comm_rank");
    check_mpi(MPI_Comm_size(MPI_COMM_WORLD, &size_), "MPI_Comm_size");
    if (timeout_seconds > 0) watchdog_ = std::make_shared<Watchdog>(timeout_seconds, rank_, size_);
  }
  // A sub-group: its own communicator, the world's watchdog.
  MpiGroup(MPI_Comm comm, std::shared_ptr<Watchdog> watchdog) : comm_(comm), watchdog_(std::move(watchdog)) {
    check_mpi(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
    check_mpi(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
  }
  ~MpiGroup() override {
    if (!owns_mpi_) {
      MPI_Comm_free(&comm_);
      return;
    }
    watchdog_.reset();
    MPI_Finalize();
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "mpi"; }
  void all_reduce_sum(float* data, int64_t count) override { reduce(data, count, MPI_FLOAT); }
  void all_reduce_sum(double* data, int64_t count) override { reduce(data, count, MPI_DOUBLE); }
  void all_gather(const float* send, float* recv, const std::vector<int64_t>& counts) override {
    TITAN_CHECK(static_cast<int>(counts.size()) == size_, "all_gather: ", counts.size(), " counts for ", size_, " ranks");
    std::vector<int> n, at;
    layout(counts, "an all-gather", n, at);
    Guard guard(watchdog_.get(), "an all-gather");
    check_mpi(MPI_Allgatherv(send, n[rank_], MPI_FLOAT, recv, n.data(), at.data(), MPI_FLOAT, comm_), "MPI_Allgatherv");
  }
  void all_gather_bytes(const uint8_t* send, uint8_t* recv, const std::vector<int64_t>& counts) override {
    TITAN_CHECK(static_cast<int>(counts.size()) == size_, "all_gather: ", counts.size(), " counts for ", size_, " ranks");
    std::vector<int> n, at;
    layout(counts, "an all-gather", n, at);
    Guard guard(watchdog_.get(), "an all-gather");
    check_mpi(MPI_Allgatherv(send, n[rank_], MPI_BYTE, recv, n.data(), at.data(), MPI_BYTE, comm_), "MPI_Allgatherv");
  }
  void reduce_scatter_sum(const float* send, float* recv, const std::vector<int64_t>& counts) override {
    TITAN_CHECK(static_cast<int>(counts.size()) == size_, "reduce_scatter: ", counts.size(), " counts for ", size_,
                " ranks");
    std::vector<int> n, at;
    layout(counts, "a reduce-scatter", n, at);
    Guard guard(watchdog_.get(), "a reduce-scatter");
    check_mpi(MPI_Reduce_scatter(send, recv, n.data(), MPI_FLOAT, MPI_SUM, comm_), "MPI_Reduce_scatter");
  }
  void broadcast(void* data, int64_t bytes, int root) override {
    Guard guard(watchdog_.get(), "a broadcast");
    check_mpi(MPI_Bcast(data, mpi_count(bytes, "a broadcast"), MPI_BYTE, root, comm_), "MPI_Bcast");
  }
  void barrier() override {
    Guard guard(watchdog_.get(), "a barrier");
    check_mpi(MPI_Barrier(comm_), "MPI_Barrier");
  }
  std::unique_ptr<ProcessGroup> split(int color, int key) override {
    MPI_Comm sub = MPI_COMM_NULL;
    {
      Guard guard(watchdog_.get(), "a communicator split");
      check_mpi(MPI_Comm_split(comm_, color, key, &sub), "MPI_Comm_split");
    }
    return std::make_unique<MpiGroup>(sub, watchdog_);
  }
  void abort(int exit_code) override { MPI_Abort(MPI_COMM_WORLD, exit_code); }

 private:
  struct Guard {  // arms the watchdog for one collective
    Guard(Watchdog* w, const char* what) : w_(w) {
      if (w_) w_->arm(what);
    }
    ~Guard() {
      if (w_) w_->disarm();
    }
    Watchdog* w_;
  };
  template <typename T>
  void reduce(T* data, int64_t count, MPI_Datatype type) {
    Guard guard(watchdog_.get(), "an all-reduce");
    constexpr int64_t kChunk = int64_t{1} << 30;  // MPI counts are int
    for (int64_t off = 0; off < count; off += kChunk) {
      const int n = static_cast<int>(std::min(kChunk, count - off));
      check_mpi(MPI_Allreduce(MPI_IN_PLACE, data + off, n, type, MPI_SUM, comm_), "MPI_Allreduce");
    }
  }
  // Per-rank counts and displacements as MPI's ints.
  static void layout(const std::vector<int64_t>& counts, const char* what, std::vector<int>& n, std::vector<int>& at) {
    int64_t offset = 0;
    for (const int64_t c : counts) {
      n.push_back(mpi_count(c, what));
      at.push_back(mpi_count(offset, what));
      offset += c;
    }
    mpi_count(offset, what);
  }
  MPI_Comm comm_;
  bool owns_mpi_ = false;
  int rank_ = 0, size_ = 1;
  std::shared_ptr<Watchdog> watchdog_;
};

}  // namespace

std::unique_ptr<ProcessGroup> make_local_group() { return std::make_unique<LocalGroup>(); }

std::unique_ptr<ProcessGroup> make_world_group(double timeout_seconds) {
  const LaunchEnv env = detect_launch();
  if (env.kind == LaunchEnv::Kind::mpi) return std::make_unique<MpiGroup>(timeout_seconds);
  if (env.kind == LaunchEnv::Kind::torchrun) {
#ifdef TITAN_WITH_CUDA
    return make_nccl_world(env, timeout_seconds);
#else
    throw UserError(concat("started by torchrun-style variables (WORLD_SIZE=", env.world,
                           "): that start runs over NCCL, in titan's CUDA build; on CPUs start the ranks with mpirun or srun"));
#endif
  }
  return std::make_unique<LocalGroup>();
}

}  // namespace titan::parallel
