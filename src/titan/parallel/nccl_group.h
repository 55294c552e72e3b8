// NCCL: a process group on GPUs (CUDA builds). Device collectives for FSDP
// (cuda::DeviceCollectives) and, for ranks started without MPI (torchrun-style variables), the
// host collectives of a ProcessGroup, staged through device memory. NCCL is loaded when first
// needed (dlopen of libnccl.so.2, or $TITAN_NCCL_LIBRARY): a single-GPU run never needs it,
// and the 200 MB library stays out of what must be installed next to titan.
#pragma once
#include <memory>
#include <string>

#include "titan/ops/cuda/collectives.h"
#include "titan/parallel/launch_env.h"
#include "titan/parallel/process_group.h"

namespace titan::parallel {

class NcclGroup;

// A fresh NCCL unique id (rank 0 makes it; the others receive it). UserError when NCCL cannot
// be loaded.
std::string nccl_unique_id();
// Rank `rank` of `world` on the current CUDA device, joined through rank 0's `unique_id`.
// Host collectives that wait longer than timeout_seconds end the process (another rank died).
std::unique_ptr<NcclGroup> make_nccl_group(int rank, int world, const std::string& unique_id, double timeout_seconds);
// The NCCL group over the ranks of `host` (the id goes out from rank 0 by host.broadcast).
std::unique_ptr<NcclGroup> make_nccl_group(ProcessGroup& host, double timeout_seconds);
// The world of a torchrun-style start: sets the device to LOCAL_RANK, the id goes from rank 0
// over TCP (MASTER_ADDR:MASTER_PORT).
std::unique_ptr<NcclGroup> make_nccl_world(const LaunchEnv& env, double timeout_seconds);

class NcclGroup : public ProcessGroup, public cuda::DeviceCollectives {
 public:
  int rank() const override = 0;
  int size() const override = 0;
};

}  // namespace titan::parallel
