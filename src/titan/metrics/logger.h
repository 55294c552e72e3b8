// Where logged steps go: the console (optionally colored), dump_folder/metrics.jsonl, and
// TensorBoard event files with torchtitan's tag names.
#pragma once
#include <cmath>
#include <cstdint>
#include <memory>
#include <ostream>
#include <string>

#include "titan/metrics/tensorboard.h"

namespace titan::metrics {

struct LogRecord {
  int64_t step = 0, steps = 0;
  double loss = 0, loss_max = 0, grad_norm = 0, lr = 0;
  double tps = 0, tflops = 0;
  double mfu = NAN;  // percent; NaN when the peak is unknown
  double mem_active_gib = 0, mem_reserved_gib = 0, mem_active_pct = 0, mem_reserved_pct = 0;
  int64_t mem_alloc_retries = 0, mem_ooms = 0;
  double data_seconds = 0, data_pct = 0;  // per step, and share of step time
  double step_seconds = 0, elapsed_s = 0, eta_s = 0;
  // Data-parallel traffic per rank per step (bytes; mean and max over the ranks); 0 on one rank.
  double comm_bytes = 0, comm_bytes_max = 0;
  int64_t float8_linears = 0;  // linears that ran in float8 (float8.enable_float8_linear)
};

struct LoggerOptions {
  std::string dump_folder;
  bool tensorboard = false;
  std::string tb_folder = "tb";  // under dump_folder
  bool color = false;
  int rank = 0;
  bool append = false;  // a resumed run adds to metrics.jsonl instead of starting it anew
  // With append: the step the run resumes after. Rows of later steps (logged by the run before
  // it stopped past its last checkpoint) are dropped first, so each step appears once.
  int64_t resumed_after_step = -1;
};

class MetricsLogger {
 public:
  // Creates metrics.jsonl (and the TensorBoard file); throws UserError when it cannot.
  MetricsLogger(const LoggerOptions& options, std::ostream& console);
  void log(const LogRecord& r);
  void log_validation(int64_t step, double loss);
  const std::string& jsonl_path() const { return jsonl_path_; }

 private:
  void drop_rows_after(int64_t step);
  LoggerOptions opt_;
  std::ostream& console_;
  std::string jsonl_path_;
  std::unique_ptr<TensorBoardWriter> tb_;
  bool jsonl_failed_ = false, tb_failed_ = false;  // each failure is reported once

  void append_checked(const std::string& line);
  void flush_tensorboard();
};

// "1h02m", "3m05s", "12s".
std::string format_duration(double seconds);

}  // namespace titan::metrics
