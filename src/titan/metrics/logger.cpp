#include "titan/metrics/logger.h"

#include <cstdio>
#include <filesystem>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "titan/core/error.h"
#include "titan/metrics/append_file.h"

namespace titan::metrics {

namespace {
struct Colors {
  const char *dim, *cyan, *green, *yellow, *blue, *magenta, *reset;
};
constexpr Colors kColor{"\033[2m", "\033[36m", "\033[32m", "\033[33m", "\033[34m", "\033[35m", "\033[0m"};
constexpr Colors kPlain{"", "", "", "", "", "", ""};

// JSON has no NaN: unknown values are null.
std::string json_number(double v) {
  if (!std::isfinite(v)) return "null";
  char b[32];
  std::snprintf(b, sizeof b, "%.17g", v);
  return b;
}
}  // namespace

std::string format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  const auto t = static_cast<int64_t>(s + 0.5);
  char b[32];
  if (t >= 3600) std::snprintf(b, sizeof b, "%lldh%02lldm", static_cast<long long>(t / 3600), static_cast<long long>(t % 3600 / 60));
  else if (t >= 60) std::snprintf(b, sizeof b, "%lldm%02llds", static_cast<long long>(t / 60), static_cast<long long>(t % 60));
  else std::snprintf(b, sizeof b, "%llds", static_cast<long long>(t));
  return b;
}

MetricsLogger::MetricsLogger(const LoggerOptions& options, std::ostream& console)
    : opt_(options), console_(console) {
  jsonl_path_ = (std::filesystem::path(opt_.dump_folder) / "metrics.jsonl").string();
  if (opt_.append && opt_.resumed_after_step >= 0) drop_rows_after(opt_.resumed_after_step);
  std::ofstream open(jsonl_path_, opt_.append ? std::ios::app : std::ios::trunc);
  if (!open) throw UserError(concat("job.dump_folder: cannot write '", jsonl_path_, "': ", std::strerror(errno)));
  if (opt_.tensorboard)
    tb_ = std::make_unique<TensorBoardWriter>((std::filesystem::path(opt_.dump_folder) / opt_.tb_folder).string(), opt_.rank);
}

void MetricsLogger::drop_rows_after(int64_t step) {
  std::ifstream in(jsonl_path_);
  if (!in) return;  // nothing logged yet
  std::ostringstream kept;
  int64_t dropped = 0;
  for (std::string line; std::getline(in, line);) {
    // Each row starts {"step": N, ... (written by log / log_validation); anything else is kept.
    int64_t row_step = -1;
    if (std::sscanf(line.c_str(), "{\"step\": %lld", reinterpret_cast<long long*>(&row_step)) == 1 && row_step > step) {
      ++dropped;
      continue;
    }
    kept << line << "\n";
  }
  if (dropped == 0) return;
  // Replaced whole or not at all: a crash here leaves the old file.
  const std::string part = jsonl_path_ + ".part";
  {
    std::ofstream out(part, std::ios::trunc);
    out << kept.str();
    if (!out) throw UserError(concat("job.dump_folder: cannot write '", part, "': ", std::strerror(errno)));
  }
  std::error_code ec;
  std::filesystem::rename(part, jsonl_path_, ec);
  if (ec) throw UserError(concat("job.dump_folder: cannot replace '", jsonl_path_, "': ", ec.message()));
  console_ << "metrics: dropped " << dropped << " row(s) of steps after " << step
           << " from metrics.jsonl (logged before the stop; the resumed run logs them again)\n";
}

void MetricsLogger::log(const LogRecord& r) {
  const Colors& c = opt_.color ? kColor : kPlain;
  char mfu[16] = "n/a";
  if (std::isfinite(r.mfu)) std::snprintf(mfu, sizeof mfu, "%.2f%%", r.mfu);
  char line[512];
  std::snprintf(line, sizeof line,
                "%sstep %5lld%s  %sloss %7.4f%s  grad_norm %7.4f  lr %.3e  %smemory %.2f GiB (%.1f%%)%s  "
                "%stps %.0f%s  %stflops %.3f  mfu %s%s  data %.1f%%  %seta %s%s\n",
                c.dim, static_cast<long long>(r.step), c.reset, c.cyan, r.loss, c.reset, r.grad_norm, r.lr, c.yellow,
                r.mem_reserved_gib, r.mem_reserved_pct, c.reset, c.blue, r.tps, c.reset, c.magenta, r.tflops, mfu,
                c.reset, r.data_pct, c.dim, format_duration(r.eta_s).c_str(), c.reset);
  std::string text = line;
  if (r.comm_bytes > 0) {  // before the newline
    std::snprintf(line, sizeof line, "  comm %.2f MiB/rank", r.comm_bytes / (1024.0 * 1024.0));
    text.insert(text.size() - 1, line);
  }
  console_ << text << std::flush;

  std::ostringstream out;
  out << "{\"step\": " << r.step << ", \"loss\": " << json_number(r.loss) << ", \"loss_max\": " << json_number(r.loss_max)
      << ", \"grad_norm\": " << json_number(r.grad_norm) << ", \"lr\": " << json_number(r.lr)
      << ", \"tps\": " << json_number(r.tps) << ", \"tflops\": " << json_number(r.tflops)
      << ", \"mfu\": " << json_number(r.mfu) << ", \"mem_active_gib\": " << json_number(r.mem_active_gib)
      << ", \"mem_reserved_gib\": " << json_number(r.mem_reserved_gib) << ", \"data_pct\": " << json_number(r.data_pct)
      << ", \"elapsed_s\": " << json_number(r.elapsed_s) << ", \"comm_bytes\": " << json_number(r.comm_bytes)
      << ", \"comm_bytes_max\": " << json_number(r.comm_bytes_max) << ", \"float8_linears\": " << r.float8_linears
      << "}\n";
  append_checked(out.str());

  if (tb_) {
    tb_->scalar("loss_metrics/global_avg_loss", r.loss, r.step);
    tb_->scalar("loss_metrics/global_max_loss", r.loss_max, r.step);
    tb_->scalar("wps", r.tps, r.step);
    if (std::isfinite(r.mfu)) tb_->scalar("mfu(%)", r.mfu, r.step);
    tb_->scalar("time_metrics/end_to_end(s)", r.step_seconds, r.step);
    tb_->scalar("time_metrics/data_loading(s)", r.data_seconds, r.step);
    tb_->scalar("time_metrics/data_loading(%)", r.data_pct, r.step);
    tb_->scalar("memory/max_active(GiB)", r.mem_active_gib, r.step);
    tb_->scalar("memory/max_active(%)", r.mem_active_pct, r.step);
    tb_->scalar("memory/max_reserved(GiB)", r.mem_reserved_gib, r.step);
    tb_->scalar("memory/max_reserved(%)", r.mem_reserved_pct, r.step);
    tb_->scalar("memory/num_alloc_retries", static_cast<double>(r.mem_alloc_retries), r.step);
    tb_->scalar("memory/num_ooms", static_cast<double>(r.mem_ooms), r.step);
    tb_->scalar("grad_norm", r.grad_norm, r.step);
    tb_->scalar("lr", r.lr, r.step);
    if (r.comm_bytes > 0) tb_->scalar("comm/bytes_per_rank", r.comm_bytes, r.step);
    flush_tensorboard();
  }
}

void MetricsLogger::log_validation(int64_t step, double loss) {
  char line[128];
  std::snprintf(line, sizeof line, "validate %lld  loss %8.4f\n", static_cast<long long>(step), loss);
  console_ << line << std::flush;
  append_checked(concat("{\"step\": ", step, ", \"val_loss\": ", json_number(loss), "}\n"));
  if (tb_) {
    tb_->scalar("validation_metrics/loss", loss, step);
    flush_tensorboard();
  }
}

// Metrics are worth a warning, not the run: checkpoints are what must not be lost.
void MetricsLogger::append_checked(const std::string& line) {
  const std::string why = append_whole(jsonl_path_, line);
  if (why.empty() || jsonl_failed_) return;
  jsonl_failed_ = true;
  console_ << "warning: " << jsonl_path_ << ": cannot write metrics (" << why
           << "); training goes on, the lines that fail are dropped whole and not reported again\n" << std::flush;
}

void MetricsLogger::flush_tensorboard() {
  try {
    tb_->flush();
  } catch (const UserError& e) {
    if (tb_failed_) return;
    tb_failed_ = true;
    console_ << "warning: " << e.what() << "; training goes on, TensorBoard records that fail are dropped whole and "
             << "not reported again\n" << std::flush;
  }
}

}  // namespace titan::metrics
