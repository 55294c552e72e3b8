// The ranks of a run and the collectives between them. World 1 needs no launcher; under
// mpirun or srun (detected from the launcher's environment) the group is MPI's world. Model
// code never sees this: the trainer applies data parallelism from outside.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace titan::parallel {

class ProcessGroup {
 public:
  virtual ~ProcessGroup() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string backend() const = 0;
  // In place, every rank gets the elementwise sum.
  virtual void all_reduce_sum(float* data, int64_t count) = 0;
  virtual void all_reduce_sum(double* data, int64_t count) = 0;
  // Rank r contributes counts[r] elements (uneven and zero counts allowed); every rank gets
  // all of them in `recv`, rank 0's first. `send` may not overlap `recv`.
  virtual void all_gather(const float* send, float* recv, const std::vector<int64_t>& counts) = 0;
  // The same for bytes (FP8 all-gather). By default through all_gather, four bytes a float.
  virtual void all_gather_bytes(const uint8_t* send, uint8_t* recv, const std::vector<int64_t>& counts);
  // In place, every rank gets the elementwise max (through all_gather: exact, any order).
  void all_reduce_max(float* data, int64_t count);
  // Sums `send` (the sum of counts elements) over the ranks; rank r receives its slice of the
  // sum, elements [counts[0] + ... + counts[r-1], + counts[r]), in `recv`.
  virtual void reduce_scatter_sum(const float* send, float* recv, const std::vector<int64_t>& counts) = 0;
  // Rank `root`'s `bytes` bytes at `data` to every rank (in place).
  virtual void broadcast(void* data, int64_t bytes, int root) = 0;
  virtual void barrier() = 0;
  // The group of the ranks that pass the same `color`, ranked by `key` (MPI_Comm_split). Every
  // rank of this group must call it. The new group must not outlive this one.
  virtual std::unique_ptr<ProcessGroup> split(int color, int key) = 0;
  // Ends every rank of the run at once (after an error on this one), so none waits forever in
  // a collective. A group of one does nothing.
  virtual void abort(int exit_code) = 0;
};

// MPI's world when this process was started by mpirun/mpiexec/srun with more than one rank
// (MPI is initialised here and finalised with the group); NCCL's (CUDA builds) when started by
// torchrun-style variables (WORLD_SIZE > 1); else a group of one. A collective
// that has not finished after `timeout_seconds` (another rank died or hangs) ends this process
// with a one-line error naming the rank, so the launcher stops the job instead of waiting.
std::unique_ptr<ProcessGroup> make_world_group(double timeout_seconds = 100);
// A group of one (no MPI).
std::unique_ptr<ProcessGroup> make_local_group();

}  // namespace titan::parallel
