#include "titan/config/job_settings.h"

#include <cmath>
#include <filesystem>

namespace titan::config {

JobSettings resolve_job_settings(const JobConfig& cfg) {
  JobSettings s;
  s.source = &cfg;
  s.dump_folder = cfg.get_string("job.dump_folder");
  s.model = {cfg.get_string("model.flavor"), cfg.get_int("model.vocab_size"), cfg.get_string("model.tokenizer_path"), {}};
  s.model.tie_word_embeddings = cfg.get_bool("model.tie_word_embeddings");
  if (const double factor = cfg.get_real("model.rope_scaling_factor"); factor >= 0)
    s.model.rope_scaling = cpu::RopeScaling{factor, cfg.get_real("model.rope_low_freq_factor"),
                                            cfg.get_real("model.rope_high_freq_factor"),
                                            cfg.get_int("model.rope_original_max_positions")};
  s.data = {cfg.get_string("training.dataset"), cfg.get_string("training.dataset_path"),
            cfg.get_string("training.dataset_field"), cfg.get_bool("training.skip_bad_records"),
            static_cast<uint64_t>(cfg.get_int("training.seed"))};
  s.optimizer = {cfg.get_real("optimizer.lr"), cfg.get_real("optimizer.beta1"), cfg.get_real("optimizer.beta2"),
                 cfg.get_real("optimizer.eps"), cfg.get_real("optimizer.weight_decay")};
  s.steps = cfg.get_int("training.steps");
  const std::string decay = cfg.get_string("training.lr_decay");
  const double decay_ratio = cfg.get_real("lr_scheduler.decay_ratio");
  s.schedule = {cfg.get_int("training.warmup_steps"), s.steps,
                decay == "cosine" ? optim::DecayKind::cosine : decay == "sqrt" ? optim::DecayKind::sqrt : optim::DecayKind::linear,
                decay_ratio < 0 ? -1 : std::llround(static_cast<double>(s.steps) * decay_ratio),  // torchtitan rounds too
                cfg.get_real("lr_scheduler.lr_min")};
  s.max_norm = cfg.get_real("training.max_norm");
  s.global_batch_size = cfg.get_int("training.global_batch_size");
  s.threads = cfg.get_int("training.threads");
  s.stop_on_nonfinite = cfg.get_string("training.on_nonfinite") == "stop";
  s.skip_memory_check = cfg.get_bool("training.skip_memory_check");
  s.comm_timeout_seconds = cfg.get_real("comm.train_timeout_seconds");

  auto& c = s.checkpoint;
  c.enabled = cfg.get_bool("checkpoint.enable_checkpoint");
  c.folder = cfg.get_string("checkpoint.folder");
  c.interval = cfg.get_int("checkpoint.interval");
  c.keep_latest_k = cfg.get_int("checkpoint.keep_latest_k");
  c.load_step = cfg.get_int("checkpoint.load_step");
  c.async = cfg.get_string("checkpoint.async_mode") != "disabled";
  c.create_seed = cfg.get_bool("checkpoint.create_seed_checkpoint");
  c.export_weights = cfg.get_bool("checkpoint.model_weights_only");
  c.export_bf16 = cfg.get_string("checkpoint.export_dtype") == "bfloat16";
  c.initial_load_path = cfg.get_string("checkpoint.initial_load_path");
  c.initial_load_in_hf = cfg.get_bool("checkpoint.initial_load_in_hf");
  c.last_save_in_hf = cfg.get_bool("checkpoint.last_save_in_hf");
  c.hf_shard_bytes = cfg.get_int("checkpoint.hf_max_shard_mb") * 1'000'000;

  s.metrics = {cfg.get_int("metrics.log_freq"), cfg.get_real("metrics.peak_tflops") * 1e12,
               cfg.get_bool("metrics.enable_tensorboard"), cfg.get_bool("metrics.enable_color_printing"),
               cfg.get_string("metrics.save_tb_folder")};
  s.validation = {cfg.get_bool("validation.enabled"), cfg.get_int("validation.freq"), cfg.get_int("validation.steps"),
                  cfg.get_string("validation.dataset_path")};
  s.profiling = {cfg.get_bool("profiling.enable_profiling"), cfg.get_int("profiling.profile_freq"),
                 cfg.get_string("profiling.save_traces_folder")};
  // A Hugging Face folder as Meta publishes it carries its tokenizer: the run uses it unless
  // model.tokenizer_path names another.
  if (s.model.tokenizer_path.empty() && c.initial_load_in_hf) {
    const auto beside = std::filesystem::path(c.initial_load_path) / "tokenizer.json";
    std::error_code ec;
    if (std::filesystem::is_regular_file(beside, ec)) s.model.tokenizer_path = beside.string();
  }
  s.plan = resolve_run_plan(cfg);
  return s;
}

}  // namespace titan::config
