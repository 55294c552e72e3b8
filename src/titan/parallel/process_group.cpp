#include "titan/parallel/process_group.h"

#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <thread>

#include "titan/core/error.h"

namespace titan::parallel {

namespace {
class LocalGroup final : public ProcessGroup {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string backend() const override { return "local"; }
  void all_reduce_sum(float*, int64_t) override {}
  void all_reduce_sum(double*, int64_t) override {}
  void barrier() override {}
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

class MpiGroup final : public ProcessGroup {
 public:
  explicit MpiGroup(double timeout_seconds) {
    int provided = 0;
    check_mpi(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
    check_mpi(MPI_Comm_rank(MPI_COMM_WORLD, &rank_), "MPI_Comm_rank");
    check_mpi(MPI_Comm_size(MPI_COMM_WORLD, &size_), "MPI_Comm_size");
    if (timeout_seconds > 0) watchdog_ = std::make_unique<Watchdog>(timeout_seconds, rank_, size_);
  }
  ~MpiGroup() override {
    watchdog_.reset();
    MPI_Finalize();
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "mpi"; }
  void all_reduce_sum(float* data, int64_t count) override { reduce(data, count, MPI_FLOAT); }
  void all_reduce_sum(double* data, int64_t count) override { reduce(data, count, MPI_DOUBLE); }
  void barrier() override {
    Guard guard(watchdog_.get(), "a barrier");
    check_mpi(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier");
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
      check_mpi(MPI_Allreduce(MPI_IN_PLACE, data + off, n, type, MPI_SUM, MPI_COMM_WORLD), "MPI_Allreduce");
    }
  }
  int rank_ = 0, size_ = 1;
  std::unique_ptr<Watchdog> watchdog_;
};

// Ranks the launcher says this process has (1 when started without one).
int launcher_world_size() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "SLURM_NTASKS", "MPI_LOCALNRANKS"}) {
    if (const char* v = std::getenv(var)) {
      const int n = std::atoi(v);
      if (n > 0) return n;
    }
  }
  return 1;
}
}  // namespace

std::unique_ptr<ProcessGroup> make_local_group() { return std::make_unique<LocalGroup>(); }

std::unique_ptr<ProcessGroup> make_world_group(double timeout_seconds) {
  if (launcher_world_size() > 1) return std::make_unique<MpiGroup>(timeout_seconds);
  return std::make_unique<LocalGroup>();
}

}  // namespace titan::parallel
