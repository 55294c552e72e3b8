// How this process was started: alone, by an MPI launcher (mpirun, mpiexec, srun), or by
// torchrun-style variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), and the
// one thing torchrun-style ranks must exchange without MPI: rank 0's NCCL id, over TCP.
#pragma once
#include <string>

namespace titan::parallel {

struct LaunchEnv {
  enum class Kind { single, mpi, torchrun };
  Kind kind = Kind::single;
  int world = 1;       // from the launcher (MPI's own rank is read after MPI starts)
  int rank = 0;        // torchrun only
  int local_rank = 0;  // the GPU this rank uses (torchrun's LOCAL_RANK, or the MPI launcher's)
  std::string master_addr;  // torchrun only
  int master_port = 0;      // titan's rendezvous: TITAN_RDZV_PORT, else MASTER_PORT + 1
};

// Reads the environment (torchrun's variables take precedence over an MPI launcher's); UserError
// naming the variable when a torchrun-style one is malformed (not a number, RANK missing or
// >= WORLD_SIZE, a port outside 1-65535, MASTER_ADDR missing).
LaunchEnv detect_launch();

// Rank 0 listens on env.master_port and sends `payload` to each of the other world - 1 ranks,
// which connect to MASTER_ADDR (retrying until it listens), name their rank, and return it.
// UserError naming the address when that does not finish within timeout_seconds.
std::string tcp_broadcast(const LaunchEnv& env, const std::string& payload, double timeout_seconds);

}  // namespace titan::parallel
