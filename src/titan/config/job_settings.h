// The job's settings: every key the trainer, the data setup and `titan estimate` act on,
// resolved once from the JobConfig into typed sections (the run plan among them). Nothing else
// reads the config by key; errors name a key's origin through `origin()`.
#pragma once
#include <cstdint>
#include <optional>
#include <string>

#include "titan/config/job_config.h"
#include "titan/config/run_plan.h"
#include "titan/optim/adamw.h"
#include "titan/ops/ops.h"
#include "titan/optim/lr_schedule.h"

namespace titan::config {

struct ModelSettings {
  std::string flavor;          // model.flavor
  int64_t vocab_size = 0;      // model.vocab_size; 0: the tokenizer's, else the flavor's
  std::string tokenizer_path;  // empty: the built-in default (or none, for synthetic data)
  std::optional<cpu::RopeScaling> rope_scaling;  // unset: the flavor's
  bool tie_word_embeddings = false;              // or the flavor's
};

struct DataSettings {
  std::string dataset, dataset_path, dataset_field;  // training.dataset / dataset_path / dataset_field
  bool skip_bad_records = false;
  uint64_t seed = 0;  // training.seed: synthetic streams and the weights' init
};

struct CheckpointSettings {
  bool enabled = false;
  std::string folder;  // under job.dump_folder
  int64_t interval = 500, keep_latest_k = 0, load_step = -1;
  bool async = false, create_seed = false, export_weights = false, export_bf16 = false;
  std::string initial_load_path;  // weights to start from while the folder holds no checkpoint
  bool initial_load_in_hf = false;
  bool last_save_in_hf = false;  // the final weights also as a sharded Hugging Face folder
  int64_t hf_shard_bytes = 5'000'000'000;  // checkpoint.hf_max_shard_mb: Meta's files are 5 GB
};

struct MetricsSettings {
  int64_t log_freq = 10;
  double peak_flops = 0;  // per second; 0: the device's known peak
  bool tensorboard = false, color = false;
  std::string tb_folder;
};

struct ValidationSettings {
  bool enabled = false;
  int64_t freq = 500, steps = 1;
  std::string dataset_path;
};

struct ProfilingSettings {
  bool enabled = false;
  int64_t freq = 10;
  std::string traces_folder;
};

struct JobSettings {
  std::string dump_folder;
  ModelSettings model;
  DataSettings data;
  optim::AdamWConfig optimizer;
  optim::LrSchedule schedule;
  double max_norm = 1.0;
  int64_t steps = 1;
  int64_t global_batch_size = -1;  // -1: batch_size x ranks (no accumulation)
  int64_t threads = 0;             // 0: OpenMP's default
  bool stop_on_nonfinite = true;   // training.on_nonfinite = "stop"
  bool skip_memory_check = false;
  double comm_timeout_seconds = 100;
  CheckpointSettings checkpoint;
  MetricsSettings metrics;
  ValidationSettings validation;
  ProfilingSettings profiling;
  RunPlan plan;  // how the run computes
  const JobConfig* source = nullptr;
  // Where a key was set ("file.toml:12", "--flag", "default"), for errors.
  std::string origin(const std::string& key) const { return source ? source->origin(key) : key; }
};

// Resolves every section; throws UserError (naming the key) where the run plan does.
JobSettings resolve_job_settings(const JobConfig& cfg);

}  // namespace titan::config
