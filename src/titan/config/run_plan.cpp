#include "titan/config/run_plan.h"

#include <cstdlib>

#include "titan/core/error.h"

namespace titan::config {

namespace {
llama3::ActivationCheckpointing checkpointing(const JobConfig& cfg) {
  using Mode = llama3::ActivationCheckpointing::Mode;
  llama3::ActivationCheckpointing ac;
  const auto mode = cfg.get_string("activation_checkpoint.mode"), option = cfg.get_string("activation_checkpoint.selective_ac_option");
  if (mode == "full") ac.mode = Mode::full;
  if (mode == "selective" && option == "op") ac.mode = Mode::selective_op;
  if (mode == "selective" && option != "op") {
    ac.mode = Mode::selective_layer;
    ac.every = std::stoll(option);  // validated by JobConfig::validate
  }
  return ac;
}

AttentionLibrary attention(const JobConfig& cfg, bool deterministic) {
  // TITAN_ATTENTION_IMPL, where set, overrides the key (benchmarks switch it without editing configs).
  const bool from_env = std::getenv("TITAN_ATTENTION_IMPL") != nullptr;
  const std::string word = from_env ? std::string() : cfg.get_string("training.attention");
  const AttentionLibrary asked = from_env ? attention_library_from_env()
                                 : word == "cudnn" ? AttentionLibrary::cudnn
                                 : word == "titan" ? AttentionLibrary::titan
                                                   : AttentionLibrary::automatic;
  if (!deterministic) return asked;
  if (asked == AttentionLibrary::cudnn)
    throw UserError(concat(cfg.origin("training.deterministic"),
                           ": training.deterministic = true keeps titan's attention kernels, but ",
                           from_env ? "TITAN_ATTENTION_IMPL=cudnn" : cfg.origin("training.attention") + " (training.attention = \"cudnn\")",
                           " asks for cuDNN's, whose backward is not bit-reproducible; unset one of them"));
  return AttentionLibrary::titan;
}
}  // namespace

RunPlan resolve_run_plan(const JobConfig& cfg) {
  RunPlan p;
  p.source = &cfg;
  const std::string device = cfg.get_string("training.device");
  p.device = device == "cpu" ? RunPlan::Device::cpu : device == "cuda" ? RunPlan::Device::cuda : RunPlan::Device::automatic;
  p.cuda_model = cfg.get_string("training.cuda_model") == "model" ? RunPlan::CudaModel::model : RunPlan::CudaModel::legacy;
  p.bf16_params = cfg.get_string("training.mixed_precision_param") == "bfloat16";
  p.compile = cfg.get_bool("training.compile");
  p.deterministic = cfg.get_bool("training.deterministic");
  p.phase_times = cfg.get_bool("profiling.phase_times");
  p.micro_batch = {cfg.get_int("training.batch_size"), cfg.get_int("training.seq_len")};
  p.ac = checkpointing(cfg);
  p.replicate_degree = cfg.get_int("training.data_parallel_replicate_degree");
  p.shard_degree = cfg.get_int("training.data_parallel_shard_degree");
  p.fsdp_on_one_rank = cfg.get_bool("training.fsdp_on_one_rank");
  p.tensor_parallel_degree = static_cast<int>(cfg.get_int("training.tensor_parallel_degree"));
  p.loss_parallel = cfg.get_bool("training.enable_loss_parallel") && !cfg.get_bool("training.disable_loss_parallel");
  const std::string reshard = cfg.get_string("training.fsdp_reshard_after_forward");
  p.reshard = ReshardPolicy::from_setting(reshard);
  p.keep_gathered_blocks = reshard == "never";
  p.attention = attention(cfg, p.deterministic);
  p.float8.enabled = cfg.get_bool("float8.enable_float8_linear");
  p.float8.recipe = float8::recipe(cfg.get_string("float8.recipe_name"));  // validated by JobConfig::validate
  p.float8.filter_fqns = cfg.get_strings("float8.filter_fqns");
  p.float8.emulate = cfg.get_bool("float8.emulate");
  p.float8.fsdp_all_gather = cfg.get_bool("float8.enable_fsdp_float8_all_gather");
  p.float8.precompute_scales = cfg.get_bool("float8.precompute_float8_dynamic_scale_for_fsdp");
  return p;
}

}  // namespace titan::config
