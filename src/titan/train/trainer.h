// The training loop: config -> model, data, optimizer, schedule; step; log.
#pragma once
#include <cstdint>
#include <memory>
#include <ostream>
#include <vector>

#include "titan/config/job_config.h"
#include "titan/data/synthetic.h"
#include "titan/models/llama3/transformer.h"
#include "titan/optim/adamw.h"
#include "titan/optim/lr_schedule.h"

namespace titan::train {

struct StepMetrics {
  int64_t step = 0;
  double loss = 0, grad_norm = 0, lr = 0;
  double step_seconds = 0;
};

class Trainer {
 public:
  // Validates the config and builds everything; throws UserError on bad settings.
  Trainer(const config::JobConfig& cfg, std::ostream& log);
  // Runs training.steps steps; returns each step's metrics.
  std::vector<StepMetrics> run();
  // One optimizer step on global batch number `step - 1`.
  StepMetrics train_step(int64_t step);
  llama3::Transformer& model() { return *model_; }

 private:
  void print_start_summary();
  void log_step(const StepMetrics& m, double tokens_per_s, double elapsed);

  const config::JobConfig& cfg_;
  std::ostream& log_;
  llama3::ModelArgs args_;
  llama3::BatchShape shape_;
  std::unique_ptr<llama3::Transformer> model_;
  std::unique_ptr<data::SyntheticStream> data_;
  optim::AdamW optimizer_;
  optim::LrSchedule schedule_;
  double max_norm_;
  std::vector<int32_t> tokens_, labels_;
  std::string metrics_path_;
};

// `titan train` with parsed flags; returns the process exit code.
int train_main(const std::vector<std::string>& args);

}  // namespace titan::train
