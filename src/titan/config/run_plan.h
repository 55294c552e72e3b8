// The run plan: the config's choices about how a run computes, resolved and checked once from
// the JobConfig (device, GPU model path, mesh degrees, FSDP's reshard policy, activation
// checkpointing, attention library, precision, compile). The trainer, the engines and
// `titan estimate` read this plan. They no longer interpret these keys from strings each in
// its own place.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "titan/config/job_config.h"
#include "titan/core/reshard_policy.h"
#include "titan/models/llama3/activation_plan.h"
#include "titan/ops/attention_library.h"
#include "titan/ops/float8.h"

namespace titan::config {

struct RunPlan {
  enum class Device { cpu, cuda, automatic };  // training.device; automatic: the GPU where one is seen
  enum class CudaModel { legacy, model };      // training.cuda_model
  Device device = Device::automatic;
  CudaModel cuda_model = CudaModel::legacy;
  bool bf16_params = true;  // training.mixed_precision_param = bfloat16 (the GPU's; the CPU computes in fp32)
  bool compile = false, deterministic = false, phase_times = false;
  llama3::BatchShape micro_batch;
  llama3::ActivationCheckpointing ac;
  int64_t replicate_degree = 1, shard_degree = -1;
  bool fsdp_on_one_rank = false;
  int tensor_parallel_degree = 1;  // the innermost mesh dimension
  bool loss_parallel = true;       // enable_loss_parallel and not disable_loss_parallel
  ReshardPolicy reshard;
  bool keep_gathered_blocks = false;  // fsdp_reshard_after_forward = "never"
  // training.attention, unless TITAN_ATTENTION_IMPL overrides it; a deterministic run keeps
  // titan's kernels.
  AttentionLibrary attention = AttentionLibrary::automatic;
  // [float8]: which linears run in float8 and under which recipe (docs/float8.md).
  struct Float8 {
    bool enabled = false;
    float8::Recipe recipe;
    std::vector<std::string> filter_fqns;
    bool emulate = false;  // the CPU emulates whatever this says
    bool fsdp_all_gather = false, precompute_scales = false;  // FP8 all-gather (tensorwise only)
  } float8;
  // Where each of the keys above was set, for errors ("file.toml:12", "--training.device", "default").
  const JobConfig* source = nullptr;
  std::string origin(const std::string& key) const { return source ? source->origin(key) : key; }
};

// UserError naming the key for a conflict the schema alone cannot see (a deterministic run
// asking for cuDNN's attention).
RunPlan resolve_run_plan(const JobConfig& cfg);

}  // namespace titan::config
