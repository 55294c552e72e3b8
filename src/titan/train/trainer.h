// The training loop: config -> data, model, optimizer, schedule; step; log.
#pragma once
#include <cstdint>
#include <memory>
#include <ostream>
#include <vector>

#include "titan/config/job_config.h"
#include "titan/data/loader.h"
#include "titan/models/llama3/transformer.h"
#include "titan/optim/adamw.h"
#include "titan/optim/lr_schedule.h"
#include "titan/train/datasets.h"

namespace titan::train {

struct StepMetrics {
  int64_t step = 0;
  double loss = 0, grad_norm = 0, lr = 0;
  double step_seconds = 0;
  double data_seconds = 0;  // waiting for the batch
};

class Trainer {
 public:
  // Validates the config and builds everything; throws UserError on bad settings.
  Trainer(const config::JobConfig& cfg, std::ostream& log);
  // Runs training.steps steps; returns each step's metrics.
  std::vector<StepMetrics> run();
  // One optimizer step on the loader's next batch.
  StepMetrics train_step(int64_t step);
  // Mean loss over validation.steps batches from the start of the validation data.
  double validation_loss();
  llama3::Transformer& model() { return *model_; }

 private:
  void print_start_summary();
  void log_step(const StepMetrics& m, double tokens_per_s, double elapsed);
  void log_validation(int64_t step);

  const config::JobConfig& cfg_;
  std::ostream& log_;
  DataSetup data_;
  llama3::ModelArgs args_;
  llama3::BatchShape shape_;
  std::unique_ptr<llama3::Transformer> model_;
  std::unique_ptr<data::DataLoader> loader_;
  optim::AdamW optimizer_;
  optim::LrSchedule schedule_;
  double max_norm_;
  std::string metrics_path_;
};

// `titan train` with parsed flags; returns the process exit code.
int train_main(const std::vector<std::string>& args);

}  // namespace titan::train
