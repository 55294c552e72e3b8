#include "titan/parallel/process_group.h"

#include <mpi.h>

#include <algorithm>
#include <cstdlib>

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

class MpiGroup final : public ProcessGroup {
 public:
  MpiGroup() {
    int provided = 0;
    check_mpi(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
    check_mpi(MPI_Comm_rank(MPI_COMM_WORLD, &rank_), "MPI_Comm_rank");
    check_mpi(MPI_Comm_size(MPI_COMM_WORLD, &size_), "MPI_Comm_size");
  }
  ~MpiGroup() override { MPI_Finalize(); }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "mpi"; }
  void all_reduce_sum(float* data, int64_t count) override { reduce(data, count, MPI_FLOAT); }
  void all_reduce_sum(double* data, int64_t count) override { reduce(data, count, MPI_DOUBLE); }
  void barrier() override { check_mpi(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier"); }
  void abort(int exit_code) override { MPI_Abort(MPI_COMM_WORLD, exit_code); }

 private:
  template <typename T>
  void reduce(T* data, int64_t count, MPI_Datatype type) {
    constexpr int64_t kChunk = int64_t{1} << 30;  // MPI counts are int
    for (int64_t off = 0; off < count; off += kChunk) {
      const int n = static_cast<int>(std::min(kChunk, count - off));
      check_mpi(MPI_Allreduce(MPI_IN_PLACE, data + off, n, type, MPI_SUM, MPI_COMM_WORLD), "MPI_Allreduce");
    }
  }
  int rank_ = 0, size_ = 1;
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

std::unique_ptr<ProcessGroup> make_world_group() {
  if (launcher_world_size() > 1) return std::make_unique<MpiGroup>();
  return std::make_unique<LocalGroup>();
}

}  // namespace titan::parallel
