#include "titan/config/job_config.h"

#include <algorithm>
#include <charconv>
#include <limits>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include <toml++/toml.h>

#include "titan/core/error.h"
#include "titan/core/file_check.h"

namespace titan::config {

namespace {
using enum KeyType;
using enum KeyStatus;

const char* kNotBuilt = "has no effect until that feature is built";

std::vector<KeySpec> make_schema() {
  return {
      {"job", "dump_folder", string, "./outputs", "folder for the resolved config, metrics and checkpoints"},
      {"job", "description", string, "", "free text describing the job"},
      {"job", "use_for_integration_test", boolean, "false", "torchtitan's CI marker; means nothing to titan", accepted_noop},

      {"profiling", "enable_profiling", boolean, "false", "write a Chrome trace of every profile_freq-th step"},
      {"profiling", "save_traces_folder", string, "profile_trace", "trace folder under dump_folder"},
      {"profiling", "profile_freq", integer, "10", "steps between traced steps"},
      {"profiling", "enable_memory_snapshot", boolean, "false", "write memory snapshots", default_only},
      {"profiling", "phase_times", boolean, "false", "titan: time each phase of a GPU step with device events; printed at the end of training"},
      {"profiling", "save_memory_snapshot_folder", string, "memory_snapshot", kNotBuilt, accepted_noop},

      {"metrics", "log_freq", integer, "10", "print metrics every N steps"},
      {"metrics", "enable_tensorboard", boolean, "false", "write TensorBoard event files"},
      {"metrics", "save_tb_folder", string, "tb", "TensorBoard folder under dump_folder"},
      {"metrics", "enable_color_printing", boolean, "false", "color the console metrics"},
      {"metrics", "peak_tflops", real, "0", "titan: the device's peak TFLOP/s for MFU; 0 = from the device table (none for CPUs: MFU n/a)"},
      {"metrics", "rank_0_only", boolean, "true", "titan logs metrics from rank 0 only (mean and max over the ranks)", default_only},

      {"model", "name", string, "llama3", "model family (llama3)"},
      {"model", "flavor", string, "debugmodel", "debugmodel, debugmodel_gqa (4 KV heads), 150M, 1B, 8B, 70B, 405B; llama3.1-8B, -70B, -405B (with RoPE scaling); llama3.2-1B, -3B; 8B_4layers"},
      {"model", "tie_word_embeddings", boolean, "false", "titan: the classifier uses the embedding's weight (Llama 3.2 1B/3B; their llama3.2-* flavors tie already)"},
      {"model", "rope_scaling_factor", real, "-1", "titan: Llama 3.1 RoPE scaling factor (-1 = the flavor's, 0 = none; Llama 3.1: 8)"},
      {"model", "rope_low_freq_factor", real, "1", "titan: RoPE scaling low_freq_factor (with rope_scaling_factor >= 1)"},
      {"model", "rope_high_freq_factor", real, "4", "titan: RoPE scaling high_freq_factor (with rope_scaling_factor >= 1)"},
      {"model", "rope_original_max_positions", integer, "8192", "titan: RoPE scaling original_max_position_embeddings (with rope_scaling_factor >= 1)"},
      {"model", "norm_type", string, "rmsnorm", "titan's Llama 3 always uses RMSNorm", accepted_noop},
      {"model", "tokenizer_path", string, "", "tokenizer file (tiktoken or tokenizer.json); \"\" = the built-in 2,048-id debug tokenizer"},
      {"model", "vocab_size", integer, "0", "titan: vocabulary size; 0 = the tokenizer's (the flavor's for synthetic data)"},

      {"optimizer", "name", string, "AdamW", "optimizer (AdamW)"},
      {"optimizer", "lr", real, "0.0008", "peak learning rate"},
      {"optimizer", "fused", boolean, "false", "torch's fused kernel switch; titan's CPU AdamW is one loop", accepted_noop},
      {"optimizer", "beta1", real, "0.9", "titan: AdamW beta1"},
      {"optimizer", "beta2", real, "0.95", "titan: AdamW beta2"},
      {"optimizer", "eps", real, "1e-08", "titan: AdamW epsilon"},
      {"optimizer", "weight_decay", real, "0.1", "titan: AdamW decoupled weight decay"},

      {"training", "batch_size", integer, "8", "sequences per rank per step"},
      {"training", "seq_len", integer, "2048", "tokens per sequence"},
      {"training", "warmup_steps", integer, "200", "linear warmup steps"},
      {"training", "max_norm", real, "1.0", "global gradient-norm clip (<= 0 disables)"},
      {"training", "steps", integer, "10000", "optimizer steps to train"},
      {"training", "global_batch_size", integer, "-1", "titan: sequences per optimizer step over all ranks; more than batch_size x ranks accumulates gradients (-1 = no accumulation)"},
      {"training", "on_nonfinite", string, "stop", "titan: a NaN/Inf loss or grad norm stops the run (stop) or skips the update (skip)"},
      {"training", "lr_decay", string, "linear", "titan: decay after warmup, linear, sqrt or cosine"},
      {"training", "data_parallel_replicate_degree", integer, "1", "replicas of the model (HSDP across them when shard degree > 1; -1 = the ranks the shard degree leaves)"},
      {"training", "data_parallel_shard_degree", integer, "-1", "FSDP: ranks each parameter is sharded over (-1 = the ranks the replicate degree leaves; 1 = no sharding)"},
      {"training", "fsdp_on_one_rank", boolean, "false", "titan: run FSDP's gathers and reduce-scatters (NCCL on a GPU) even on one rank, to exercise a sharded run's paths on one device"},
      {"training", "fsdp_reshard_after_forward", string, "default", "FSDP: free gathered weights after forward and gather again for backward: default (blocks do; the root and the last block do not), always (those too), never (keep them: less traffic, more memory)"},
      {"training", "tensor_parallel_degree", integer, "1", "tensor parallel (with sequence parallel): ranks each block's linears, the embedding and the classifier are sliced over, neighbouring ranks innermost in the mesh (CPU; GPU with cuda_model = model)"},
      {"training", "attention", string, "auto", "titan, GPU: auto (cuDNN's fused attention where it loads and takes the shape, titan's kernels otherwise), titan, or cudnn; TITAN_ATTENTION_IMPL overrides it; training.deterministic keeps titan's"},
      {"training", "cuda_model", string, "legacy", "titan, GPU: legacy (CudaTransformer, the default until it is proven on a card) or model (the one Llama 3 model over the CUDA backend: activation checkpointing, HSDP and tensor parallel on the GPU; not yet run on a card)"},
      {"training", "compile", boolean, "false", "GPU: fused kernels and CUDA graphs of the step (no effect on the CPU)"},
      {"training", "deterministic", boolean, "false", "GPU: only kernels that sum in a fixed order, so reruns give bit-identical losses (attention stays on titan's kernels instead of cuDNN's); the CPU always does"},
      {"training", "dataset", string, "c4", "c4, c4_test, synthetic, synthetic_pattern, or a file, folder or glob"},
      {"training", "dataset_path", string, "", "where the dataset lives (c4: the folder of en/c4-train.*.json.gz)"},
      {"training", "dataset_field", string, "text", "titan: the JSON field holding each document's text"},
      {"training", "skip_bad_records", boolean, "false", "titan: skip (and count) bad JSON lines instead of stopping"},
      {"training", "enable_loss_parallel", boolean, "true", "with tensor parallel: cross-entropy over the vocabulary's slices, the logits never gathered"},
      {"training", "disable_loss_parallel", boolean, "false", "torchtitan's later name: true = enable_loss_parallel false"},
      {"training", "mixed_precision_param", string, "bfloat16", "compute dtype on GPU (bfloat16 or float32)"},
      {"training", "mixed_precision_reduce", string, "float32", "gradient reduce dtype (float32)"},
      {"training", "gc_freq", integer, "50", "Python garbage collection; means nothing to titan", accepted_noop},
      {"training", "seed", integer, "0", "seed for initialisation and synthetic data"},
      {"training", "threads", integer, "0", "titan: CPU threads (0 = all cores)"},
      {"training", "skip_memory_check", boolean, "false", "titan: start even when the memory estimate exceeds the device's memory"},
      {"training", "device", string, "auto", "titan: cpu, cuda, or auto (cuda when built with it and a GPU is found)"},

      {"validation", "enabled", boolean, "false", "evaluate a validation loss every freq steps"},
      {"validation", "dataset_path", string, "", "validation files; \"\" = the dataset's validation split"},
      {"validation", "freq", integer, "10", "steps between validation runs"},
      {"validation", "steps", integer, "1", "batches per validation run; -1 = the whole validation set (every whole batch before it wraps)"},

      {"lr_scheduler", "decay_ratio", real, "-1", "warmup-stable-decay: the last decay_ratio x training.steps steps decay, the steps between warmup and them hold the peak lr (-1 = decay right after warmup)"},
      {"lr_scheduler", "lr_min", real, "0", "the decay ends at lr_min x optimizer.lr instead of 0"},

      {"experimental", "context_parallel_degree", integer, "1", "context parallel degree", default_only},
      {"experimental", "pipeline_parallel_degree", integer, "1", "pipeline parallel degree", default_only},
      {"experimental", "pipeline_parallel_split_points", string, "", "pipeline split points", default_only},
      {"experimental", "pipeline_parallel_schedule", string, "1F1B", "pipeline schedule", accepted_noop},
      {"experimental", "enable_async_tensor_parallel", boolean, "false", "async tensor parallel (the all-gather overlapped with the matmul): a later step", default_only},

      {"checkpoint", "enable_checkpoint", boolean, "false", "save checkpoints and resume from the latest one"},
      {"checkpoint", "folder", string, "checkpoint", "checkpoint folder under dump_folder"},
      {"checkpoint", "interval_type", string, "steps", "steps (the only kind)"},
      {"checkpoint", "interval", integer, "500", "steps between checkpoints (and one at the last step)"},
      {"checkpoint", "model_weights_only", boolean, "false", "at the end, export the model as Hugging Face safetensors + config.json"},
      {"checkpoint", "export_dtype", string, "float32", "dtype of the exported weights: float32 or bfloat16"},
      {"checkpoint", "async_mode", string, "disabled", "disabled, async (background writes), async_with_pinned_mem (same on the CPU)"},
      {"checkpoint", "create_seed_checkpoint", boolean, "false", "write step 0 (the initialised model) and exit"},
      {"checkpoint", "keep_latest_k", integer, "0", "keep only the newest k checkpoints (0 = all)"},
      {"checkpoint", "load_step", integer, "-1", "resume from step-N (-1 = the latest complete checkpoint)"},
      {"checkpoint", "initial_load_path", string, "", "weights to start from while the checkpoint folder holds no checkpoint: a titan step folder, or (initial_load_in_hf) a Hugging Face Llama folder"},
      {"checkpoint", "initial_load_in_hf", boolean, "false", "initial_load_path is a Hugging Face folder (safetensors + config.json)"},
      {"checkpoint", "initial_load_model_only", boolean, "true", "the initial load takes the model weights only (titan: the only kind)"},
      {"checkpoint", "last_save_in_hf", boolean, "false", "at the end, also write the weights as a Hugging Face folder, sharded like Meta's (needs last_save_model_only)"},
      {"checkpoint", "hf_max_shard_mb", integer, "5000", "titan: the last_save_in_hf folder's safetensors files hold at most this many MB each (Meta's: 5000)"},
      {"checkpoint", "last_save_model_only", boolean, "false", "the last save's Hugging Face folder holds the model only (titan keeps its full last checkpoint for exact resume)"},

      {"comm", "init_timeout_seconds", integer, "300", "accepted (MPI starts through the launcher)", accepted_noop},
      {"comm", "train_timeout_seconds", real, "100", "seconds a collective may take before the rank ends the job (another rank died or hangs)"},
      {"comm", "trace_buf_size", integer, "20000", "accepted (NCCL flight recorder)", accepted_noop},

      {"activation_checkpoint", "mode", string, "none", "none, selective or full (recompute activations in backward; CPU backend)"},
      {"activation_checkpoint", "selective_ac_option", string_or_int, "2", "selective: N (recompute every N-th block) or op (keep matmul and attention outputs, recompute the rest)"},

      {"float8", "enable_float8_linear", boolean, "false", "run the linears in float8 (torchao's float8 training; the CPU emulates it)"},
      {"float8", "recipe_name", string, "", "tensorwise (unset: the default), rowwise or rowwise_with_gw_hp"},
      {"float8", "filter_fqns", string_list, "", "linears whose name contains one of these stay in high precision (train_configs: [\"output\"])"},
      {"float8", "emulate", boolean, "false", "emulate float8 in high precision (the CPU always does)"},
      {"float8", "enable_fsdp_float8_all_gather", boolean, "false", "FSDP gathers the float8 linears' weights in e4m3 (tensorwise recipe; one byte an element on the wire)"},
      {"float8", "precompute_float8_dynamic_scale_for_fsdp", boolean, "false", "the FP8 all-gather's weight amaxes in one all-reduce per step instead of one per weight"},
  };
}

const KeySpec* find_spec(const std::string& full_key) {
  for (const auto& s : schema())
    if (s.full() == full_key) return &s;
  return nullptr;
}

const KeyAlias* find_alias(const std::string& name) {
  for (const auto& a : key_aliases())
    if (a.alias == name) return &a;
  return nullptr;
}

// The schema key `name` sets, directly or as an alias (null: neither).
const KeySpec* spec_named(const std::string& name) {
  if (const KeySpec* s = find_spec(name)) return s;
  if (const KeyAlias* a = find_alias(name)) return find_spec(a->key);
  return nullptr;
}

Value through_alias(const std::string& name, Value v) {
  if (const KeyAlias* a = find_alias(name); a && a->negated) v = !std::get<bool>(v);
  return v;
}

std::string type_name(KeyType t) {
  switch (t) {
    case boolean: return "a boolean";
    case integer: return "an integer";
    case real: return "a number";
    case string: return "a string";
    case string_or_int: return "a string or an integer";
    case string_list: return "a list of strings";
  }
  return "?";
}

std::string quoted(const std::string& s) {
  std::ostringstream os;
  os << toml::value<std::string>(s);
  return os.str();
}

std::string render(const Value& v) {
  if (auto list = std::get_if<std::vector<std::string>>(&v)) {
    std::string out = "[";
    for (size_t i = 0; i < list->size(); ++i) out += (i ? ", " : "") + quoted((*list)[i]);
    return out + "]";
  }
  if (auto b = std::get_if<bool>(&v)) return *b ? "true" : "false";
  if (auto i = std::get_if<int64_t>(&v)) return std::to_string(*i);
  if (auto d = std::get_if<double>(&v)) {
    std::ostringstream os;
    os.precision(17);
    os << *d;
    std::string s = os.str();
    if (s.find_first_of(".eEn") == std::string::npos) s += ".0";
    return s;
  }
  return std::get<std::string>(v);
}

// Parses command-line text into a value of the key's type; nullopt-like false on failure.
bool parse_text(KeyType type, const std::string& text, Value& out) {
  switch (type) {
    case boolean:
      if (text == "true" || text == "1") { out = true; return true; }
      if (text == "false" || text == "0") { out = false; return true; }
      return false;
    case integer: {
      int64_t v = 0;
      auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
      if (ec != std::errc() || p != text.data() + text.size() || text.empty()) return false;
      out = v;
      return true;
    }
    case real: {
      try {
        size_t used = 0;
        double v = std::stod(text, &used);
        if (used != text.size() || !std::isfinite(v)) return false;
        out = v;
        return true;
      } catch (const std::exception&) {
        return false;
      }
    }
    case string:
    case string_or_int: out = text; return true;
    case string_list: {
      std::vector<std::string> items;
      std::istringstream in(text);
      for (std::string item; std::getline(in, item, ',');) {
        const auto first = item.find_first_not_of(' '), last = item.find_last_not_of(' ');
        if (first == std::string::npos) return false;  // an empty entry ("a,,b", "a,") is a typo
        items.push_back(item.substr(first, last - first + 1));
      }
      out = items;
      return true;
    }
  }
  return false;
}

// Converts a TOML node into a value of the key's type.
bool parse_node(KeyType type, const toml::node& node, Value& out) {
  switch (type) {
    case boolean:
      if (auto v = node.value_exact<bool>()) { out = *v; return true; }
      return false;
    case integer:
      if (auto v = node.value_exact<int64_t>()) { out = *v; return true; }
      return false;
    case real:
      if (node.is_integer()) { out = static_cast<double>(*node.value<int64_t>()); return true; }
      if (auto v = node.value_exact<double>(); v && std::isfinite(*v)) { out = *v; return true; }
      return false;
    case string:
      if (auto v = node.value_exact<std::string>()) { out = *v; return true; }
      return false;
    case string_or_int:
      if (auto v = node.value_exact<std::string>()) { out = *v; return true; }
      if (auto v = node.value_exact<int64_t>()) { out = std::to_string(*v); return true; }
      return false;
    case string_list: {
      const auto* array = node.as_array();
      if (!array) return false;
      std::vector<std::string> items;
      for (const auto& element : *array) {
        auto v = element.value_exact<std::string>();
        if (!v) return false;
        items.push_back(*v);
      }
      out = items;
      return true;
    }
  }
  return false;
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = up;
    }
  }
  return row[b.size()];
}

// " (did you mean training.steps?)" for the schema key nearest a misspelt one, if one is near.
std::string did_you_mean(const std::string& full_key) {
  const KeySpec* best = nullptr;
  size_t best_distance = std::max<size_t>(2, full_key.size() / 5) + 1;
  for (const auto& s : schema())
    if (const size_t d = edit_distance(full_key, s.full()); d < best_distance) {
      best = &s;
      best_distance = d;
    }
  return best ? concat(" (did you mean ", best->full(), "?)") : "";
}

std::string keys_of(const std::string& section) {
  std::string out;
  for (const auto& s : schema())
    if (s.section == section) out += (out.empty() ? "" : ", ") + s.key;
  for (const auto& a : key_aliases())
    if (a.alias.rfind(section + ".", 0) == 0) out += (out.empty() ? "" : ", ") + a.alias.substr(section.size() + 1);
  return out;
}

std::string sections() {
  std::string out;
  std::set<std::string> seen;
  for (const auto& s : schema())
    if (seen.insert(s.section).second) out += (out.empty() ? "" : ", ") + s.section;
  for (const auto& a : key_aliases())
    if (const std::string section = a.alias.substr(0, a.alias.find('.')); seen.insert(section).second)
      out += ", " + section;
  return out;
}
}  // namespace

const std::vector<KeySpec>& schema() {
  static const std::vector<KeySpec> table = make_schema();
  return table;
}

const std::vector<KeyAlias>& key_aliases() {
  static const std::vector<KeyAlias> table = {
      {"lr_scheduler.warmup_steps", "training.warmup_steps"},
      {"lr_scheduler.decay_type", "training.lr_decay"},
      {"training.local_batch_size", "training.batch_size"},
      {"parallelism.data_parallel_replicate_degree", "training.data_parallel_replicate_degree"},
      {"parallelism.data_parallel_shard_degree", "training.data_parallel_shard_degree"},
      {"parallelism.fsdp_reshard_after_forward", "training.fsdp_reshard_after_forward"},
      {"parallelism.tensor_parallel_degree", "training.tensor_parallel_degree"},
      {"parallelism.disable_loss_parallel", "training.disable_loss_parallel"},
      {"parallelism.enable_async_tensor_parallel", "experimental.enable_async_tensor_parallel"},
      {"parallelism.pipeline_parallel_degree", "experimental.pipeline_parallel_degree"},
      {"parallelism.context_parallel_degree", "experimental.context_parallel_degree"},
      {"checkpoint.enable", "checkpoint.enable_checkpoint"},
      {"metrics.disable_color_printing", "metrics.enable_color_printing", true},
  };
  return table;
}

JobConfig::JobConfig() {
  for (const auto& s : schema()) {
    Value v;
    TITAN_CHECK(parse_text(s.type, s.default_value, v), "bad default for ", s.full());
    values_[s.full()] = v;
    origins_[s.full()] = "(default)";
  }
}

void JobConfig::set(const KeySpec& spec, const std::string& text, const std::string& origin) {
  Value v;
  if (!parse_text(spec.type, text, v))
    throw UserError(concat(origin, ": ", spec.full(), ": expected ", type_name(spec.type), ", found '", text, "'"));
  set_named(origin.substr(2), spec, v, origin);
}

void JobConfig::set_named(const std::string& name, const KeySpec& spec, Value v, const std::string& origin) {
  const std::string key = spec.full();
  v = through_alias(name, std::move(v));
  if (auto it = set_as_.find(key); it != set_as_.end() && it->second != name && values_[key] != v)
    throw UserError(concat(origin, ": ", name, " sets ", key, " to ", render(through_alias(name, v)), ", but ",
                           origins_[key], " set it as ", it->second, " to ", render(through_alias(it->second, values_[key])),
                           " (the two names mean the same key: keep one)"));
  values_[key] = std::move(v);
  origins_[key] = origin;
  set_as_[key] = name;
}

void JobConfig::load_file(const std::string& path) {
  // toml++ reads a directory as an empty file, and a FIFO would block it forever.
  require_readable_file(path, "config");
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  if (!in && !in.eof()) throw UserError(concat(path, ": cannot read config"));
  load_text(text.str(), path);
}

void JobConfig::load_string(const std::string& text, const std::string& name) { load_text(text, name); }

void JobConfig::load_text(const std::string& text, const std::string& path) {
  toml::table root;
  try {
    root = toml::parse(text, path);
  } catch (const toml::parse_error& e) {
    throw UserError(concat(path, ":", e.source().begin.line, ": TOML syntax error: ", e.description()));
  }
  set_as_.clear();
  for (const auto& [section_key, section_node] : root) {
    const std::string section(section_key.str());
    const auto line = section_node.source().begin.line;
    const auto* table = section_node.as_table();
    if (!table)
      throw UserError(concat(path, ":", line, ": '", section, "' must be a key inside a [section] table"));
    if (keys_of(section).empty())
      throw UserError(concat(path, ":", line, ": unknown section [", section, "] (expected one of: ", sections(), ")"));
    for (const auto& [key, node] : *table) {
      const std::string full = section + "." + std::string(key.str());
      const auto kline = node.source().begin.line;
      const KeySpec* spec = spec_named(full);
      if (!spec)
        throw UserError(concat(path, ":", kline, ": unknown key '", full, "'", did_you_mean(full), " (section [", section,
                               "] has: ", keys_of(section), ")"));
      Value v;
      if (!parse_node(spec->type, node, v))
        throw UserError(concat(path, ":", kline, ": ", full, ": expected ", type_name(spec->type)));
      set_named(full, *spec, std::move(v), concat(path, ":", kline));
    }
  }
}

void JobConfig::apply_overrides(const std::vector<std::string>& args) {
  set_as_.clear();  // a flag overrides the file under either name
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg.rfind("--", 0) != 0) throw UserError(concat("unexpected argument '", arg, "' (flags look like --section.key value)"));
    std::string name = arg.substr(2), text;
    bool has_value = false;
    if (auto eq = name.find('='); eq != std::string::npos) {
      text = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_value = true;
    }
    const KeySpec* spec = spec_named(name);
    if (!spec) throw UserError(concat("--", name, ": unknown option", did_you_mean(name), " (titan train --help lists them)"));
    if (!has_value) {
      const bool next_is_value = i + 1 < args.size() && args[i + 1].rfind("--", 0) != 0;
      if (spec->type == KeyType::boolean && (!next_is_value || (args[i + 1] != "true" && args[i + 1] != "false"))) {
        text = "true";  // a bare boolean flag
      } else if (next_is_value) {
        text = args[++i];
      } else {
        throw UserError(concat("--", name, ": missing value (expected ", type_name(spec->type), ")"));
      }
    }
    set(*spec, text, "--" + name);
  }
}

const Value& JobConfig::value(const std::string& full_key) const {
  auto it = values_.find(full_key);
  TITAN_CHECK(it != values_.end(), "config key ", full_key, " is not in the schema");
  return it->second;
}

bool JobConfig::get_bool(const std::string& k) const { return std::get<bool>(value(k)); }
int64_t JobConfig::get_int(const std::string& k) const { return std::get<int64_t>(value(k)); }
double JobConfig::get_real(const std::string& k) const { return std::get<double>(value(k)); }
std::string JobConfig::get_string(const std::string& k) const { return std::get<std::string>(value(k)); }
std::vector<std::string> JobConfig::get_strings(const std::string& k) const {
  return std::get<std::vector<std::string>>(value(k));
}

bool JobConfig::is_default(const std::string& k) const {
  const KeySpec* spec = find_spec(k);
  TITAN_CHECK(spec, "config key ", k, " is not in the schema");
  Value d;
  parse_text(spec->type, spec->default_value, d);
  return d == value(k);
}

std::string JobConfig::origin(const std::string& k) const { return origins_.at(k); }

void JobConfig::validate() const {
  auto fail = [&](const std::string& key, const std::string& what) {
    throw UserError(concat(origin(key), ": ", key, " = ", render(value(key)), ": ", what));
  };
  for (const auto& s : schema())
    if (s.status == KeyStatus::default_only && !is_default(s.full()))
      fail(s.full(), concat("not supported yet (titan supports only ", s.default_value.empty() ? "\"\"" : s.default_value, ")"));
  auto positive = [&](const std::string& key) {
    if (get_int(key) <= 0) fail(key, "expected a positive integer");
  };
  positive("training.batch_size");
  positive("training.seq_len");
  positive("training.tensor_parallel_degree");
  if (origin("training.enable_loss_parallel") != "(default)" && origin("training.disable_loss_parallel") != "(default)" &&
      get_bool("training.enable_loss_parallel") == get_bool("training.disable_loss_parallel"))
    fail("training.disable_loss_parallel",
         concat("contradicts training.enable_loss_parallel = ", get_bool("training.enable_loss_parallel") ? "true" : "false",
                " (", origin("training.enable_loss_parallel"), "); set one of them"));
  positive("training.steps");
  positive("metrics.log_freq");
  positive("validation.freq");
  positive("profiling.profile_freq");
  if (get_real("metrics.peak_tflops") < 0) fail("metrics.peak_tflops", "expected >= 0");
  if (const auto g = get_int("training.global_batch_size"); g != -1 && (g <= 0 || g % get_int("training.batch_size") != 0))
    fail("training.global_batch_size", concat("expected -1 or a positive multiple of training.batch_size (",
                                              get_int("training.batch_size"), ")"));
  // Token counts are int64 products of these: bound them far above any real batch, below overflow.
  constexpr int64_t kMaxTokens = int64_t{1} << 40;
  const int64_t seq = get_int("training.seq_len");
  for (const char* key : {"training.batch_size", "training.global_batch_size"})
    if (get_int(key) > kMaxTokens / seq)
      fail(key, concat("times training.seq_len (", seq, ") is more than 2^40 tokens per step"));
  if (get_string("checkpoint.interval_type") != "steps") fail("checkpoint.interval_type", "expected steps");
  positive("checkpoint.interval");
  if (get_int("checkpoint.keep_latest_k") < 0) fail("checkpoint.keep_latest_k", "expected >= 0");
  if (get_int("checkpoint.load_step") < -1) fail("checkpoint.load_step", "expected -1 or a step");
  if (const auto d = get_string("checkpoint.export_dtype"); d != "float32" && d != "bfloat16")
    fail("checkpoint.export_dtype", "expected float32 or bfloat16");
  if (const auto m = get_string("checkpoint.async_mode"); m != "disabled" && m != "async" && m != "async_with_pinned_mem")
    fail("checkpoint.async_mode", "expected disabled, async or async_with_pinned_mem");
  if (!get_bool("checkpoint.initial_load_model_only"))
    fail("checkpoint.initial_load_model_only", "titan loads the model only from initial_load_path (to resume a whole "
                                               "state, point checkpoint.folder at it)");
  if (get_bool("checkpoint.initial_load_in_hf") && get_string("checkpoint.initial_load_path").empty())
    fail("checkpoint.initial_load_in_hf", "needs checkpoint.initial_load_path (the Hugging Face folder)");
  positive("checkpoint.hf_max_shard_mb");
  if (get_bool("checkpoint.last_save_in_hf") && !get_bool("checkpoint.last_save_model_only"))
    fail("checkpoint.last_save_in_hf", "needs checkpoint.last_save_model_only = true (a Hugging Face folder holds no optimizer state)");
  if (get_bool("checkpoint.last_save_in_hf") && !get_bool("checkpoint.enable_checkpoint"))
    fail("checkpoint.last_save_in_hf", "needs checkpoint.enable_checkpoint = true (it is written into the checkpoint folder)");
  if (get_bool("checkpoint.create_seed_checkpoint") && !get_bool("checkpoint.enable_checkpoint"))
    fail("checkpoint.create_seed_checkpoint", "needs checkpoint.enable_checkpoint = true");
  if (const auto o = get_string("training.on_nonfinite"); o != "stop" && o != "skip")
    fail("training.on_nonfinite", "expected stop or skip");
  if (const auto v = get_int("validation.steps"); v < 1 && v != -1)
    fail("validation.steps", "expected a positive integer, or -1 for the whole validation set");
  if (const double r = get_real("lr_scheduler.decay_ratio"); r != -1 && !(r >= 0 && r <= 1))
    fail("lr_scheduler.decay_ratio", "expected -1 (decay right after warmup) or 0 to 1");
  if (const double m = get_real("lr_scheduler.lr_min"); !(m >= 0 && m <= 1))
    fail("lr_scheduler.lr_min", "expected 0 to 1 (a fraction of optimizer.lr)");
  if (get_int("training.warmup_steps") < 0) fail("training.warmup_steps", "expected >= 0");
  if (get_int("training.threads") < 0 || get_int("training.threads") > 1024)
    fail("training.threads", "expected 0 (all cores) to 1024");
  if (!(get_real("comm.train_timeout_seconds") > 0)) fail("comm.train_timeout_seconds", "expected > 0");
  if (const auto m = get_string("activation_checkpoint.mode"); m != "none" && m != "selective" && m != "full")
    fail("activation_checkpoint.mode", "expected none, selective or full");
  if (get_string("activation_checkpoint.mode") == "selective") {
    const auto o = get_string("activation_checkpoint.selective_ac_option");
    const bool number = !o.empty() && o.size() < 10 && o.find_first_not_of("0123456789") == std::string::npos;
    if (o != "op" && (!number || std::stoll(o) < 1))
      fail("activation_checkpoint.selective_ac_option", "expected op or a positive integer N (recompute every N-th block)");
  }
  if (const auto dev = get_string("training.device"); dev != "auto" && dev != "cpu" && dev != "cuda")
    fail("training.device", "expected auto, cpu or cuda");
  if (get_int("model.vocab_size") < 0) fail("model.vocab_size", "expected >= 0 (0 = from the tokenizer)");
  if (const double f = get_real("model.rope_scaling_factor"); f != -1 && f != 0 && !(f >= 1))
    fail("model.rope_scaling_factor", "expected -1 (the flavor's), 0 (none) or at least 1");
  if (get_real("model.rope_scaling_factor") == -1)
    for (const char* key : {"model.rope_low_freq_factor", "model.rope_high_freq_factor", "model.rope_original_max_positions"})
      if (!is_default(key))
        fail(key, "takes effect with model.rope_scaling_factor >= 1 only (it is -1: the flavor's scaling); set the factor too");
  if (get_real("model.rope_scaling_factor") >= 1 &&
      !(get_real("model.rope_low_freq_factor") > 0 && get_real("model.rope_high_freq_factor") > get_real("model.rope_low_freq_factor")))
    fail("model.rope_high_freq_factor", "expected 0 < model.rope_low_freq_factor < model.rope_high_freq_factor");
  if (get_int("model.rope_original_max_positions") <= 0) fail("model.rope_original_max_positions", "expected a positive integer");
  if (get_int("model.vocab_size") > 2147483647) fail("model.vocab_size", "expected at most 2^31 - 1 (int32 token ids)");
  if (!(get_real("optimizer.lr") > 0)) fail("optimizer.lr", "expected a positive number");
  if (get_real("optimizer.beta1") < 0 || get_real("optimizer.beta1") >= 1) fail("optimizer.beta1", "expected 0 <= beta1 < 1");
  if (get_real("optimizer.beta2") < 0 || get_real("optimizer.beta2") >= 1) fail("optimizer.beta2", "expected 0 <= beta2 < 1");
  if (!(get_real("optimizer.eps") > 0)) fail("optimizer.eps", "expected a positive number");
  if (get_real("optimizer.weight_decay") < 0) fail("optimizer.weight_decay", "expected >= 0");
  // Values that can only overflow float32 state, refused before they write inf/NaN checkpoints.
  constexpr double kFloatMax = std::numeric_limits<float>::max(), kFloatMinNormal = std::numeric_limits<float>::min();
  if (get_real("optimizer.lr") > kFloatMax) fail("optimizer.lr", concat("expected at most ", kFloatMax, " (float32's largest)"));
  if (get_real("optimizer.eps") < kFloatMinNormal || get_real("optimizer.eps") > 1)
    fail("optimizer.eps", concat("expected ", kFloatMinNormal, " (float32's smallest normal) to 1"));
  if (get_real("optimizer.lr") * get_real("optimizer.weight_decay") >= 1)
    fail("optimizer.weight_decay", concat("expected optimizer.lr x weight_decay < 1 (here ", get_real("optimizer.lr"), " x ",
                                          get_real("optimizer.weight_decay"), "): decay would flip or blow up the weights"));
  if (get_string("model.name") != "llama3") fail("model.name", "expected llama3");
  if (get_string("model.norm_type") != "rmsnorm") fail("model.norm_type", "expected rmsnorm");
  if (get_string("optimizer.name") != "AdamW") fail("optimizer.name", "expected AdamW");
  const auto decay = get_string("training.lr_decay");
  if (decay != "linear" && decay != "sqrt" && decay != "cosine") fail("training.lr_decay", "expected linear, sqrt or cosine");
  const auto param = get_string("training.mixed_precision_param");
  if (param != "bfloat16" && param != "float32") fail("training.mixed_precision_param", "expected bfloat16 or float32");
  if (get_string("training.mixed_precision_reduce") != "float32") fail("training.mixed_precision_reduce", "expected float32");
  for (const char* key : {"training.data_parallel_shard_degree", "training.data_parallel_replicate_degree"})
    if (const auto d = get_int(key); d != -1 && d < 1) fail(key, "expected -1 or a positive integer");
  if (get_int("training.data_parallel_shard_degree") == -1 && get_int("training.data_parallel_replicate_degree") == -1)
    fail("training.data_parallel_replicate_degree", "at most one of it and training.data_parallel_shard_degree may be -1");
  if (const auto m = get_string("training.attention"); m != "auto" && m != "titan" && m != "cudnn")
    fail("training.attention", "expected auto, titan or cudnn");
  if (const auto m = get_string("training.cuda_model"); m != "legacy" && m != "model")
    fail("training.cuda_model", "expected legacy or model");
  if (const auto r = get_string("float8.recipe_name"); !r.empty() && r != "tensorwise" && r != "rowwise" && r != "rowwise_with_gw_hp")
    fail("float8.recipe_name", "expected tensorwise, rowwise or rowwise_with_gw_hp (or unset: tensorwise)");
  if (get_bool("float8.enable_fsdp_float8_all_gather")) {
    if (!get_bool("float8.enable_float8_linear"))
      fail("float8.enable_fsdp_float8_all_gather", "needs float8.enable_float8_linear = true");
    if (const auto r = get_string("float8.recipe_name"); !r.empty() && r != "tensorwise")
      fail("float8.enable_fsdp_float8_all_gather",
           concat("needs the tensorwise recipe (float8.recipe_name = ", r, " scales the weight per row, so FSDP gathers it in "
                  "high precision, as torchtitan does: set enable_fsdp_float8_all_gather = false)"));
  }
  if (get_bool("float8.precompute_float8_dynamic_scale_for_fsdp") && !get_bool("float8.enable_fsdp_float8_all_gather"))
    fail("float8.precompute_float8_dynamic_scale_for_fsdp", "needs float8.enable_fsdp_float8_all_gather = true");
  if (const auto r = get_string("training.fsdp_reshard_after_forward"); r != "default" && r != "always" && r != "never")
    fail("training.fsdp_reshard_after_forward", "expected default, always or never");
}

std::vector<std::string> JobConfig::notices() const {
  std::vector<std::string> out;
  for (const auto& s : schema())
    if (s.status == KeyStatus::accepted_noop && !is_default(s.full()))
      out.push_back(concat(s.full(), " = ", render(value(s.full())), ": accepted, ", s.help));
  return out;
}

std::vector<std::string> JobConfig::changed_lines() const {
  std::vector<std::string> out;
  for (const auto& s : schema()) {
    if (is_default(s.full())) continue;
    const Value& v = value(s.full());
    std::string text;
    if (const auto* d = std::get_if<double>(&v)) {
      char buf[64];
      const auto r = std::to_chars(buf, buf + sizeof buf, *d);  // the shortest text that reads back as *d
      text.assign(buf, r.ptr);
    } else if (std::holds_alternative<std::string>(v)) {
      text = quoted(std::get<std::string>(v));
    } else {
      text = render(v);
    }
    out.push_back(concat("  ", s.full(), " = ", text, "  (", origin(s.full()), ")"));
  }
  return out;
}

std::string JobConfig::to_toml() const {
  std::ostringstream os;
  std::string section;
  for (const auto& s : schema()) {
    if (s.section != section) {
      os << (section.empty() ? "" : "\n") << "[" << s.section << "]\n";
      section = s.section;
    }
    const Value& v = value(s.full());
    os << s.key << " = ";
    if (std::holds_alternative<std::string>(v)) {
      os << quoted(std::get<std::string>(v));
    } else {
      os << render(v);
    }
    os << "\n";
  }
  return os.str();
}

std::string help_text() {
  std::ostringstream os;
  os << "usage: titan train [--config FILE] [--section.key VALUE | --section.key=VALUE | --bool.flag]...\n"
     << "  (--job.config_file FILE is torchtitan's spelling of --config)\n\n"
     << "Keys (torchtitan's schema; 'titan:' marks titan's own):\n";
  for (const auto& s : schema()) {
    os << "  --" << s.full() << " (" << type_name(s.type).substr(type_name(s.type).find(' ') + 1) << ", default "
       << (s.default_value.empty() ? "\"\"" : s.default_value) << "): " << s.help;
    for (const auto& a : key_aliases())
      if (a.key == s.full()) os << " [also " << a.alias << (a.negated ? ", negated" : "") << "]";
    if (s.status == KeyStatus::default_only) os << " [not supported yet: default only]";
    if (s.status == KeyStatus::accepted_noop) os << " [accepted, no effect]";
    os << "\n";
  }
  return os.str();
}

}  // namespace titan::config
