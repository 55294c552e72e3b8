// Per-device memory of a training run, predicted from the config alone (`titan estimate`, and
// the trainer's check before it allocates anything). Each term mirrors what the backend
// allocates: the CPU plan (Transformer::plan, fp32) or the CUDA plan (CudaTransformer, bf16
// activations, fp32 master weights, gradients and AdamW moments). With shards > 1 parameters,
// gradients and optimizer state are FSDP shards (an even split) plus the whole weights and
// gradients FSDP holds at once (every block's weights with keep_gathered_blocks, that is
// fsdp_reshard_after_forward = "never"): on the CPU the root and one block, measured equal; on
// a GPU the root and two blocks (the next one prefetched while one computes or reduces) and one
// unit's reduce-scatter output (not yet measured on several cards). `attention` other than titan
// adds cuDNN's backward scratch for the shapes cuDNN takes.
#pragma once
#include <cstdint>
#include <string>

#include "titan/config/job_config.h"
#include "titan/config/job_settings.h"
#include "titan/config/run_plan.h"
#include "titan/models/llama3/model_args.h"
#include "titan/models/llama3/transformer.h"
#include "titan/ops/attention_library.h"

namespace titan::train {

struct MemoryEstimate {
  double parameters = 0, gradients = 0, optimizer = 0, activations = 0, buffers = 0;  // bytes per device
  double total() const { return parameters + gradients + optimizer + activations + buffers; }
};

// cuda: the legacy CudaTransformer; cuda_model: the one model over the CUDA backend
// (training.cuda_model = "model"), whose activations are the one activation plan's.
enum class EstimateBackend { cpu, cuda, cuda_model };
// Which of them a config's run uses on a GPU.
EstimateBackend cuda_estimate_backend(const config::RunPlan& plan);

MemoryEstimate estimate_memory(const llama3::ModelArgs& args, llama3::BatchShape micro_batch,
                               const llama3::ActivationCheckpointing& ac, EstimateBackend backend, int64_t shards, bool keep_gathered_blocks = false,
                               AttentionLibrary attention = AttentionLibrary::titan, bool float8_linears = false,
                               int tp = 1, bool loss_parallel = true);

// Activation bytes of the CPU plan (equals Transformer::memory().activation_bytes); with
// float8_linears, the room for the emulated casts too.
// tp: the tensor-parallel degree (this rank's share of heads, feed-forward and vocabulary; the
// residual stream's rows split).
double cpu_activation_bytes(const llama3::ModelArgs& args, llama3::BatchShape s, const llama3::ActivationCheckpointing& ac,
                            bool float8_linears = false, int tp = 1);

// Whether the config puts any linear of this model in float8 (float8.enable_float8_linear, and
// some linear left by the filter).
bool runs_float8_linears(const config::RunPlan& plan, const llama3::ModelArgs& args);

// Bytes of the FP8 all-gather's own buffers under FSDP over `shards`; 0 when it is off. Host
// (cuda false): the largest float8 weight's e4m3 bytes and its shard's. Device: one unit's e4m3
// shards and the scales.
double float8_all_gather_bytes(const config::RunPlan& plan, const llama3::ModelArgs& args, int64_t shards,
                               bool cuda = false);

// Host bytes of the async checkpoint snapshot (weights and both AdamW moments) when the config
// turns async checkpointing on; 0 otherwise.
double async_checkpoint_bytes(const config::CheckpointSettings& checkpoint, const llama3::ModelArgs& args, int64_t shards = 1);

// One line: the terms, the total, and the device's memory when known (> 0).
std::string format_estimate(const MemoryEstimate& e, const std::string& what, double device_bytes);

// `titan estimate --config FILE [--ngpu N] [--device cuda|cpu] [--section.key VALUE ...]`: N
// devices, training.tensor_parallel_degree of them per TP group, the rest data parallel.
int estimate_main(const std::vector<std::string>& args);

}  // namespace titan::train
