// The training loop: config -> data, model, optimizer, schedule; step; log.
#pragma once
#include <cstdint>
#include <memory>
#include <ostream>
#include <vector>

#include "titan/checkpoint/manager.h"
#include "titan/config/job_config.h"
#include "titan/config/job_settings.h"
#include "titan/core/folder_lock.h"
#include "titan/core/trace.h"
#include "titan/data/loader.h"
#include "titan/metrics/logger.h"
#include "titan/models/llama3/transformer.h"
#include "titan/ops/attention_library.h"
#include "titan/optim/adamw.h"
#include "titan/parallel/data_parallel.h"
#include "titan/parallel/process_group.h"
#include "titan/parallel/tensor_parallel.h"
#include "titan/train/datasets.h"
#include "titan/train/engine.h"

namespace titan::train {

struct StepMetrics {
  int64_t step = 0;
  double loss = 0, grad_norm = 0, lr = 0;
  double step_seconds = 0;
  double data_seconds = 0;  // waiting for batches
  bool skipped = false;     // non-finite: update skipped (training.on_nonfinite = skip)
};

class Trainer {
 public:
  // Validates the config and builds everything; throws UserError on bad settings.
  // One rank of `group` (data parallel with replicated parameters when it has several ranks;
  // logs, metrics and checkpoints come from rank 0).
  // (No group: a group of one.)
  Trainer(const config::JobConfig& cfg, std::ostream& log, parallel::ProcessGroup* group = nullptr);
  // Runs training.steps steps (fewer when SIGINT/SIGTERM asks to stop); returns each step's metrics.
  std::vector<StepMetrics> run();
  // One optimizer step over the next global batch: micro-batches of batch_size rows, their
  // gradients accumulated, then clipping and AdamW.
  StepMetrics train_step(int64_t step);
  // Mean loss over validation.steps batches from the start of the validation data.
  double validation_loss();
  llama3::Transformer& model() { return *model_; }
  // Model shape, tokenizer and dtype as JSON: a checkpoint loads only into the same.
  std::string model_signature() const;

 private:
  void print_start_summary();
  void check_memory_estimate(bool cuda, int shards) const;
  // FSDP on a GPU: NCCL over the shard group (made here, or the world's own under torchrun).
  cuda::DeviceCollectives* device_collectives(bool on_cuda);
  // The replicas' NCCL group of a GPU run with HSDP or replicated data parallel (null otherwise).
  cuda::DeviceCollectives* replica_collectives(bool on_cuda);
  // A GPU run's tensor-parallel NCCL group over tp_group_ (null otherwise).
  cuda::DeviceCollectives* tensor_parallel_collectives(bool on_cuda);
  cuda::DeviceCollectives* nccl_over(parallel::ProcessGroup& host, std::unique_ptr<parallel::ProcessGroup>& keep);
  // Sums the loss and token count over the ranks.
  void reduce_loss(double& loss_sum, int64_t& count);
  // Mean and max over the ranks of this rank's bytes per step in the window.
  void fill_comm(metrics::LogRecord& r, double window_bytes, int64_t window_steps);
  // True when the step's loss and norm are finite; else stops (throws) or warns, per
  // training.on_nonfinite.
  bool finite_or_stop(int64_t step, const StepMetrics& m);
  metrics::LogRecord make_record(const StepMetrics& m, double window_seconds, double window_data_seconds,
                                 int64_t window_steps, double elapsed) const;
  void write_trace(int64_t step);
  // Rank 0 locks the dump folder and the checkpoint folder before any rank touches them.
  void lock_run_folders();
  // Splits the world into the TP groups and the data-parallel ranks; refuses what TP does not run with.
  void make_tensor_parallel_groups();
  void enable_float8_all_gather(const llama3::Float8Linears& f8);
  void write_resolved_config(const std::string& dump);
  void resume_from(const std::string& dir, data::WindowSource& source);
  // `hint`: what the user can do about a difference.
  void require_same_model(const std::string& dir, const std::string& signature, bool same_flavor,
                          const std::string& hint) const;
  void initial_load();
  void save_checkpoint(int64_t step);
  int64_t global_batch() const;  // sequences per optimizer step over all ranks
  double tensor_parallel_volume() const;  // analytic bytes per rank per step (0 without TP)
  double grad_sq_over_tensor_parallel();
  // The model as a Hugging Face folder `<checkpoint folder>/<name><step>` (sharded over files of
  // at most max_shard_bytes; 0: one file).
  void export_weights(int64_t step, const std::string& name, int64_t max_shard_bytes);

  std::unique_ptr<parallel::ProcessGroup> own_group_;  // the one-rank group when none is given
  parallel::ProcessGroup& group_;
  const config::JobConfig& cfg_;   // for the resolved TOML and the digest; the keys are read once, into job_
  config::JobSettings job_;
  const config::RunPlan& plan_;  // job_.plan: how the run computes
  std::ostream& log_;
  std::vector<std::unique_ptr<FolderLock>> locks_;  // the run's folders, held until everything below is gone
  DataSetup data_;
  llama3::ModelArgs args_;
  llama3::BatchShape shape_;  // one micro-batch
  int64_t accumulation_ = 1;  // micro-batches per optimizer step
  // The mesh [replicate, shard, tp], TP innermost: the TP group of neighbouring ranks, and the
  // ranks data parallelism spans (one per TP group position; the world without TP).
  std::unique_ptr<parallel::ProcessGroup> tp_group_, dp_ranks_;
  parallel::ProcessGroup* data_ranks_ = nullptr;  // dp_ranks_, or group_
  std::unique_ptr<parallel::DataParallel> dp_;  // FSDP/HSDP applied to model_
  // Tensor parallel applied to the host model_ (degree > 1); on a GPU the engine applies its own.
  std::unique_ptr<parallel::TensorParallel> tp_;
  std::unique_ptr<parallel::ProcessGroup> nccl_;  // GPU FSDP's collectives, when this trainer made them
  std::unique_ptr<parallel::ProcessGroup> nccl_replicas_;  // GPU HSDP's across the replicas
  std::unique_ptr<parallel::ProcessGroup> nccl_tensor_parallel_;  // GPU tensor parallel's, over tp_group_
  std::unique_ptr<llama3::Transformer> model_;  // owns the parameters (init, checkpoints)
  std::unique_ptr<Engine> engine_;              // runs the steps: CPU or GPU
  std::unique_ptr<data::DataLoader> loader_;
  optim::AdamW optimizer_;
  double peak_flops_ = 0;  // per second; 0 = unknown (MFU n/a)
  double flops_per_token_ = 0;  // torchtitan's formula for this model and seq_len
  int64_t float8_linears_ = 0;  // linears in float8 (metrics.jsonl says so every record)
  std::unique_ptr<metrics::MetricsLogger> logger_;
  Tracer tracer_;
  std::unique_ptr<checkpoint::SaveCollectives> save_collectives_;  // before checkpoints_: it outlives it
  std::unique_ptr<checkpoint::CheckpointManager> checkpoints_;
  int64_t start_step_ = 1;
  bool validation_size_logged_ = false;
};

// `titan train` with parsed flags; returns the process exit code.
int train_main(const std::vector<std::string>& args);

}  // namespace titan::train
