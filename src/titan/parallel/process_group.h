// The ranks of a run and the collectives between them. World 1 needs no launcher; under
// mpirun or srun (detected from the launcher's environment) the group is MPI's world. Model
// code never sees this: the trainer applies data parallelism from outside.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

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
  virtual void barrier() = 0;
  // Ends every rank of the run at once (after an error on this one), so none waits forever in
  // a collective. A group of one does nothing.
  virtual void abort(int exit_code) = 0;
};

// MPI's world when this process was started by mpirun/mpiexec/srun with more than one rank
// (MPI is initialised here and finalised with the group), else a group of one. A collective
// that has not finished after `timeout_seconds` (another rank died or hangs) ends this process
// with a one-line error naming the rank, so the launcher stops the job instead of waiting.
std::unique_ptr<ProcessGroup> make_world_group(double timeout_seconds = 100);
// A group of one (no MPI).
std::unique_ptr<ProcessGroup> make_local_group();

}  // namespace titan::parallel
