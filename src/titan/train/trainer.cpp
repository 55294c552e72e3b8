#include "titan/train/trainer.h"

#include <sys/resource.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>

#include <omp.h>

#include "titan/core/error.h"
#include "titan/core/timer.h"
#include "titan/metrics/flops.h"
#include "titan/optim/grad_clip.h"

namespace titan::train {

namespace {
constexpr int64_t kDefaultVocab = 2048;  // the debug model's built-in tokenizer

double gib(size_t bytes) { return static_cast<double>(bytes) / (1024.0 * 1024.0 * 1024.0); }

double peak_rss_gib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / (1024.0 * 1024.0);
}

// The flavor's shapes with the vocabulary from, in order: model.vocab_size, the tokenizer,
// the flavor (debugmodel: 2,048).
llama3::ModelArgs model_args(const config::JobConfig& cfg, const DataSetup& data) {
  llama3::ModelArgs a;
  try {
    a = llama3::flavor(cfg.get_string("model.flavor"));
  } catch (const UserError& e) {
    throw UserError(concat(cfg.origin("model.flavor"), ": ", e.what()));
  }
  if (cfg.get_string("model.flavor") == "debugmodel") a.vocab_size = kDefaultVocab;
  const int64_t vocab = cfg.get_int("model.vocab_size");
  if (data.tokenizer) {
    if (vocab > 0 && vocab < data.tokenizer->vocab_size())
      throw UserError(concat(cfg.origin("model.vocab_size"), ": model.vocab_size = ", vocab,
                             " is smaller than the tokenizer's ", data.tokenizer->vocab_size(), " ids"));
    a.vocab_size = vocab > 0 ? vocab : data.tokenizer->vocab_size();
  } else if (vocab > 0) {
    a.vocab_size = vocab;
  }
  if (data.synthetic && a.vocab_size < data::SyntheticStream::kPeriod)
    throw UserError(concat(cfg.origin("model.vocab_size"), ": model.vocab_size = ", a.vocab_size,
                           ": synthetic data needs at least ", data::SyntheticStream::kPeriod, " ids"));
  a.max_seq_len = std::max(a.max_seq_len, cfg.get_int("training.seq_len"));
  a.validate(cfg.origin("model.flavor") + ": model." + cfg.get_string("model.flavor"));
  return a;
}

optim::AdamWConfig adamw_config(const config::JobConfig& cfg) {
  return {cfg.get_real("optimizer.lr"), cfg.get_real("optimizer.beta1"), cfg.get_real("optimizer.beta2"),
          cfg.get_real("optimizer.eps"), cfg.get_real("optimizer.weight_decay")};
}
}  // namespace

Trainer::Trainer(const config::JobConfig& cfg, std::ostream& log)
    : cfg_(cfg), log_(log), data_(resolve_data(cfg)), args_(model_args(cfg, data_)),
      shape_{cfg.get_int("training.batch_size"), cfg.get_int("training.seq_len")},
      optimizer_(adamw_config(cfg)),
      schedule_{cfg.get_int("training.warmup_steps"), cfg.get_int("training.steps"),
                cfg.get_string("training.lr_decay") == "cosine" ? optim::DecayKind::cosine : optim::DecayKind::linear},
      max_norm_(cfg.get_real("training.max_norm")) {
  if (const int64_t threads = cfg.get_int("training.threads"); threads > 0) omp_set_num_threads(static_cast<int>(threads));
  for (const auto& n : cfg.notices()) log_ << "notice: " << n << "\n";
  if (cfg.get_string("training.mixed_precision_param") == "bfloat16")
    log_ << "notice: training.mixed_precision_param = bfloat16: the CPU backend computes in float32\n";

  const std::filesystem::path dump(cfg.get_string("job.dump_folder"));
  std::error_code ec;
  std::filesystem::create_directories(dump, ec);
  if (ec) throw UserError(concat("job.dump_folder: cannot create '", dump.string(), "': ", ec.message()));
  std::ofstream(dump / "config.toml") << cfg.to_toml();
  metrics_path_ = (dump / "metrics.jsonl").string();
  std::ofstream truncate(metrics_path_);
  if (!truncate) throw UserError(concat("job.dump_folder: cannot write '", metrics_path_, "'"));

  model_ = std::make_unique<llama3::Transformer>(args_);
  model_->init_weights(static_cast<uint64_t>(cfg.get_int("training.seed")));
  model_->plan(shape_);
  log_ << "data: " << data_.description << "\n";
  auto log_line = [&log](const std::string& line) { log << line << "\n" << std::flush; };
  loader_ = std::make_unique<data::DataLoader>(make_train_source(data_, cfg, args_.vocab_size, log_line),
                                               shape_.seq, shape_.batch, 0, shape_.batch);
  print_start_summary();
}

void Trainer::print_start_summary() {
  const auto mem = model_->memory();
  log_ << "model: llama3 " << cfg_.get_string("model.flavor") << " (dim " << args_.dim << ", layers "
       << args_.n_layers << ", heads " << args_.n_heads << ", kv heads " << args_.n_kv_heads << ", ffn "
       << args_.ffn_hidden() << ", vocab " << args_.vocab_size << ")\n";
  char line[256];
  std::snprintf(line, sizeof line, "parameters: %lld (%lld non-embedding)\n",
                static_cast<long long>(mem.parameters),
                static_cast<long long>(mem.parameters - mem.embedding_parameters));
  log_ << line;
  std::snprintf(line, sizeof line,
                "memory (GiB): parameters %.3f, gradients %.3f, optimizer %.3f, activations %.3f "
                "(batch %lld x seq %lld)\n",
                gib(mem.parameter_bytes), gib(mem.gradient_bytes), gib(mem.optimizer_bytes),
                gib(mem.activation_bytes), static_cast<long long>(shape_.batch),
                static_cast<long long>(shape_.seq));
  log_ << line;
  log_ << "device: cpu, float32, " << omp_get_max_threads() << " threads\n" << std::flush;
}

StepMetrics Trainer::train_step(int64_t step) {
  Timer timer;
  const data::Batch batch = loader_->next();
  StepMetrics m;
  m.step = step;
  m.data_seconds = timer.seconds();
  model_->zero_grad();
  const float grad_scale = 1.0f / static_cast<float>(shape_.rows());
  const auto result = model_->forward_backward(batch.tokens.data(), batch.labels.data(), shape_, grad_scale);
  m.loss = result.loss_sum / static_cast<double>(std::max<int64_t>(1, result.count));
  m.grad_norm = std::sqrt(optim::grad_sq_sum(model_->parameters()));
  if (!std::isfinite(m.loss) || !std::isfinite(m.grad_norm))
    throw std::runtime_error(concat("step ", step, ": loss ", m.loss, ", grad norm ", m.grad_norm,
                                    " is not finite; stopping (try a lower optimizer.lr)"));
  if (max_norm_ > 0) optim::clip_grads(model_->parameters(), m.grad_norm, max_norm_);
  m.lr = optimizer_.config().lr * schedule_.factor(step - 1);
  optimizer_.step(model_->parameters(), m.lr);
  m.step_seconds = timer.seconds();
  return m;
}

double Trainer::validation_loss() {
  auto source = make_validation_source(data_, cfg_, args_.vocab_size);
  const int64_t steps = cfg_.get_int("validation.steps"), seq = shape_.seq;
  std::vector<int32_t> window(seq + 1), tokens(shape_.rows()), labels(shape_.rows());
  double loss_sum = 0;
  int64_t count = 0;
  for (int64_t s = 0; s < steps; ++s) {
    for (int64_t r = 0; r < shape_.batch; ++r) {
      source->next(window.data());
      std::copy_n(window.begin(), seq, tokens.begin() + r * seq);
      std::copy_n(window.begin() + 1, seq, labels.begin() + r * seq);
    }
    const auto res = model_->forward_loss(tokens.data(), labels.data(), shape_);
    loss_sum += res.loss_sum;
    count += res.count;
  }
  return loss_sum / static_cast<double>(std::max<int64_t>(1, count));
}

void Trainer::log_step(const StepMetrics& m, double tps, double elapsed) {
  const double tflops = metrics::flops_per_token(args_, shape_.seq) * tps / 1e12;
  char line[320];
  std::snprintf(line, sizeof line,
                "step %5lld  loss %8.4f  grad_norm %7.4f  lr %.3e  tps %8.0f  tflops %.4f  mfu n/a  "
                "rss %.2f GiB\n",
                static_cast<long long>(m.step), m.loss, m.grad_norm, m.lr, tps, tflops, peak_rss_gib());
  log_ << line << std::flush;
  std::ofstream out(metrics_path_, std::ios::app);
  std::snprintf(line, sizeof line,
                "{\"step\": %lld, \"loss\": %.9g, \"grad_norm\": %.9g, \"lr\": %.9g, \"tps\": %.3f, "
                "\"tflops\": %.6f, \"elapsed_s\": %.3f}\n",
                static_cast<long long>(m.step), m.loss, m.grad_norm, m.lr, tps, tflops, elapsed);
  out << line;
}

void Trainer::log_validation(int64_t step) {
  const double val = validation_loss();
  char line[200];
  std::snprintf(line, sizeof line, "validate %lld  loss %8.4f\n", static_cast<long long>(step), val);
  log_ << line << std::flush;
  std::snprintf(line, sizeof line, "{\"step\": %lld, \"val_loss\": %.9g}\n", static_cast<long long>(step), val);
  std::ofstream(metrics_path_, std::ios::app) << line;
}

std::vector<StepMetrics> Trainer::run() {
  const int64_t steps = cfg_.get_int("training.steps"), log_freq = cfg_.get_int("metrics.log_freq");
  const bool validate = cfg_.get_bool("validation.enabled");
  const int64_t val_freq = cfg_.get_int("validation.freq");
  std::vector<StepMetrics> history;
  Timer total;
  double window_seconds = 0;
  int64_t window_steps = 0;
  for (int64_t step = 1; step <= steps; ++step) {
    history.push_back(train_step(step));
    window_seconds += history.back().step_seconds;
    ++window_steps;
    if (step == 1 || step % log_freq == 0 || step == steps) {
      log_step(history.back(), static_cast<double>(window_steps * shape_.rows()) / window_seconds,
               total.seconds());
      window_seconds = 0;
      window_steps = 0;
    }
    if (validate && (step % val_freq == 0 || step == steps)) log_validation(step);
  }
  return history;
}

int train_main(const std::vector<std::string>& args) {
  config::JobConfig cfg;
  std::vector<std::string> overrides;
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--help" || args[i] == "-h") {
      std::cout << config::help_text();
      return 0;
    }
    if (args[i] == "--config" || args[i].rfind("--config=", 0) == 0 || args[i] == "--job.config_file") {
      std::string path;
      if (auto eq = args[i].find('='); eq != std::string::npos) {
        path = args[i].substr(eq + 1);
      } else if (i + 1 < args.size()) {
        path = args[++i];
      } else {
        throw UserError("--config: missing file path");
      }
      cfg.load_file(path);
      continue;
    }
    overrides.push_back(args[i]);
  }
  cfg.apply_overrides(overrides);
  cfg.validate();
  Trainer trainer(cfg, std::cout);
  trainer.run();
  return 0;
}

}  // namespace titan::train
