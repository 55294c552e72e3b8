// Where a training step's arithmetic runs: the CPU reference (fp32) or one CUDA device (bf16
// mixed precision). The host Transformer always owns the parameters for init and checkpoints;
// a device engine mirrors them and syncs at the edges (to_host before a save, from_host after
// a load).
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "titan/config/job_config.h"
#include "titan/config/run_plan.h"
#include "titan/core/trace.h"
#include "titan/metrics/memory.h"
#include "titan/models/llama3/transformer.h"
#include "titan/ops/attention_library.h"
#include "titan/optim/adamw.h"

namespace titan::cuda {
class DeviceCollectives;
}

namespace titan::train {

class Engine {
 public:
  virtual ~Engine() = default;
  virtual std::string description() const = 0;
  virtual bool on_cpu() const = 0;
  // Peak FLOP/s of the device for MFU; 0 when unknown (CPUs).
  virtual double peak_flops() const = 0;
  virtual void zero_grad() = 0;
  virtual cpu::ClassifierResult forward_backward(const int32_t* tokens, const int32_t* labels, llama3::BatchShape s,
                                                 float grad_scale, Tracer* tracer) = 0;
  virtual cpu::ClassifierResult forward_loss(const int32_t* tokens, const int32_t* labels, llama3::BatchShape s) = 0;
  virtual double grad_sq_sum() = 0;
  // Clips to max_norm (when > 0 and grad_norm exceeds it) and applies one AdamW step.
  virtual void update(double grad_norm, double max_norm, double lr) = 0;
  virtual void to_host() = 0;
  virtual void from_host() = 0;
  virtual metrics::MemorySample memory() const = 0;
  // One whole step (zero grads, forward, loss, backward, grad norm, clipping, AdamW) in one
  // call, where the engine has such a path (CUDA with training.compile: a CUDA graph). Returns
  // false, doing nothing, where it has not. A non-finite loss or norm skips the update.
  struct StepOutcome {
    double loss_sum = 0;
    int64_t count = 0;
    double grad_norm = 0;
  };
  virtual bool fused_step(const int32_t* /*tokens*/, const int32_t* /*labels*/, llama3::BatchShape /*s*/,
                          float /*grad_scale*/, double /*lr*/, double /*max_norm*/, StepOutcome& /*out*/) {
    return false;
  }
  // Device time per phase of a step (profiling.phase_times), as printable lines; empty when off.
  virtual std::string phase_report() const { return ""; }
  // A GPU engine running FSDP: bytes its collectives moved since the last call, and the most
  // bytes of gathered weights and whole gradients it held at once (0 otherwise).
  virtual double take_comm_bytes() { return 0; }
  // After a step's micro-batches, on a GPU engine with replicas (HSDP): sums the gradient
  // shards over the replicas on the device. The CPU's are summed by DataParallel.
  virtual void reduce_replica_gradients() {}
  // After a step's micro-batches, on a GPU engine under tensor parallel: sums the replicated
  // tensors' gradients (the norms') over the TP group on the device. The CPU's: TensorParallel.
  virtual void reduce_tensor_parallel_gradients() {}
  virtual size_t peak_unsharded_bytes() const { return 0; }
  // A GPU engine whose FSDP gathers float8 weights in e4m3: the weight-amax all-reduces so far.
  virtual int64_t float8_amax_reductions() const { return 0; }
};

// What the CUDA backend refuses in a run plan, checkable without a GPU (bf16 only, activation
// checkpointing only on the one model, the attention kernels' head sizes): UserError naming the key.
void check_cuda_config(const config::RunPlan& plan, const llama3::ModelArgs& args);
// Whether training.device puts this run on the GPU, in this build and on this machine; throws
// every refusal make_engine would (so callers can check memory before allocating anything).
bool resolve_device(const config::RunPlan& plan, const llama3::ModelArgs& args);
// training.device as `titan estimate` reads it: "auto" is the GPU where this build sees one.
bool prefers_cuda(const config::RunPlan& plan);
// Memory of the device a run will use: GPU 0's, or the machine's RAM.
double device_memory_bytes(bool cuda);

// training.device: "cpu", "cuda", or "auto" (cuda when this build has it and a GPU is found).
// Throws UserError when the choice cannot run here.
// `fsdp` (GPU only): the collectives FSDP runs over; the model's parameters are that group's shards.
// `replicas` (GPU, the one model only): the collectives HSDP sums gradients over.
// `tensor_parallel` (GPU, the one model only): the TP group's; the model's weights are its slices.
std::unique_ptr<Engine> make_engine(const config::RunPlan& plan, llama3::Transformer& model, optim::AdamW& optimizer,
                                    cuda::DeviceCollectives* fsdp = nullptr, cuda::DeviceCollectives* replicas = nullptr,
                                    cuda::DeviceCollectives* tensor_parallel = nullptr);

#ifdef TITAN_WITH_CUDA
}  // namespace titan::train
namespace titan::cuda {
class PhaseTimer;
struct AllocatorStats;
}  // namespace titan::cuda
namespace titan::train {
// Device time per phase as printable lines (empty before two timed steps), and the allocator's
// statistics as the metrics' memory sample.
std::string format_phase_report(const cuda::PhaseTimer* timer);
metrics::MemorySample device_memory_sample(const cuda::AllocatorStats& stats);
// The one model on one GPU (training.cuda_model = "model"), on `device`; with `fsdp`, sharded
// over those collectives.
std::unique_ptr<Engine> make_cuda_model_engine(const config::RunPlan& plan, llama3::Transformer& model,
                                               optim::AdamW& optimizer, int device, cuda::DeviceCollectives* fsdp,
                                               cuda::DeviceCollectives* replicas,
                                               cuda::DeviceCollectives* tensor_parallel = nullptr);
// The GPU this rank uses: the launcher's local rank (torchrun's LOCAL_RANK, mpirun's or
// srun's), made current. UserError when there is no such device.
int select_cuda_device();
std::unique_ptr<Engine> make_cuda_engine(const config::RunPlan& plan, llama3::Transformer& model,
                                         optim::AdamW& optimizer, cuda::DeviceCollectives* fsdp,
                                         cuda::DeviceCollectives* replicas, cuda::DeviceCollectives* tensor_parallel);
#endif

}  // namespace titan::train
