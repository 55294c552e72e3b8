#include "titan/train/trainer.h"

#include "titan/train/memory_estimate.h"

#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>

#include <omp.h>

#include <nlohmann/json.hpp>

#include "titan/checkpoint/hf_llama.h"
#include "titan/checkpoint/model_signature.h"
#include "titan/core/error.h"
#include "titan/core/stop_signals.h"
#include "titan/core/timer.h"
#include "titan/metrics/flops.h"
#include "titan/metrics/memory.h"
#include "titan/ops/attention_library.h"
#include "titan/train/rank_agreement.h"
#ifdef TITAN_WITH_CUDA
#include "titan/parallel/nccl_group.h"
#endif

namespace titan::train {

// The ranks' agreement on a save, over the run's process group (checkpoint/manager.h).
class GroupSaveCollectives final : public checkpoint::SaveCollectives {
 public:
  explicit GroupSaveCollectives(parallel::ProcessGroup& group) : group_(group) {}
  std::vector<std::string> all_gather(const std::string& mine) override {
    const int n = group_.size();
    std::vector<double> sizes(static_cast<size_t>(n), 0.0);  // summing one-hot vectors gathers them
    sizes[static_cast<size_t>(group_.rank())] = static_cast<double>(mine.size());
    group_.all_reduce_sum(sizes.data(), n);
    std::vector<int64_t> counts(sizes.begin(), sizes.end());
    int64_t total = 0;
    for (const int64_t c : counts) total += c;
    std::vector<uint8_t> all(static_cast<size_t>(std::max<int64_t>(total, 1)));
    group_.all_gather_bytes(reinterpret_cast<const uint8_t*>(mine.data()), all.data(), counts);
    std::vector<std::string> out;
    int64_t at = 0;
    for (const int64_t c : counts) {
      out.emplace_back(reinterpret_cast<const char*>(all.data()) + at, static_cast<size_t>(c));
      at += c;
    }
    return out;
  }
  void barrier() override { group_.barrier(); }

 private:
  parallel::ProcessGroup& group_;
};

namespace {
double gib(size_t bytes) { return static_cast<double>(bytes) / (1024.0 * 1024.0 * 1024.0); }

// Prints "step N still running" every `every` seconds while a step takes long.
class ProgressIndicator {
 public:
  ProgressIndicator(std::ostream& out, double every) : out_(out), every_(every), thread_([this] { loop(); }) {}
  ~ProgressIndicator() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  void start_step(int64_t step) {
    std::lock_guard<std::mutex> lock(mu_);
    step_ = step;
    started_ = std::chrono::steady_clock::now();
  }

 private:
  void loop() {
    std::unique_lock<std::mutex> lock(mu_);
    while (!cv_.wait_for(lock, std::chrono::duration<double>(every_), [&] { return done_; })) {
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
      if (step_ > 0 && s >= every_)
        out_ << "  ... step " << step_ << " still running (" << static_cast<int64_t>(s) << " s)\n" << std::flush;
    }
  }
  std::ostream& out_;
  double every_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  int64_t step_ = 0;
  std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
  std::thread thread_;
};

}  // namespace

Trainer::Trainer(const config::JobConfig& cfg, std::ostream& log, parallel::ProcessGroup* group)
    : own_group_(group ? nullptr : parallel::make_local_group()),
      group_(group ? *group : *own_group_),
      cfg_(cfg), job_(config::resolve_job_settings(cfg)),  // a bad TITAN_ATTENTION_IMPL is an error on any device, as in titan estimate
      plan_(job_.plan), log_(log), data_(resolve_data(job_)), args_(resolve_model_args(job_, data_)),
      shape_(plan_.micro_batch), optimizer_(job_.optimizer) {
  lock_run_folders();
  require_same_on_all_ranks(group_, computation_digest(cfg, data_), "config");
  if (job_.threads > 0) omp_set_num_threads(static_cast<int>(job_.threads));
  parallel::check_tensor_parallel(plan_.tensor_parallel_degree, group_.size(), args_, shape_,
                                   cfg.origin("training.tensor_parallel_degree"));
  // Tensor-parallel ranks share their batch: the data is split over the others.
  const int64_t ranks = group_.size() / plan_.tensor_parallel_degree;
  if (const int64_t global = job_.global_batch_size; global > 0) {
    if (global % (shape_.batch * ranks) != 0)
      throw UserError(concat(cfg.origin("training.global_batch_size"), ": training.global_batch_size = ", global,
                             " is not a multiple of training.batch_size x data-parallel ranks = ", shape_.batch, " x ",
                             ranks));
    accumulation_ = global / (shape_.batch * ranks);
  }
  peak_flops_ = job_.metrics.peak_flops;
  flops_per_token_ = metrics::flops_per_token(args_, shape_.seq);
  for (const auto& n : cfg.notices()) log_ << "notice: " << n << "\n";

  const std::filesystem::path dump(job_.dump_folder);
  if (group_.rank() == 0) write_resolved_config(dump.string());
  const auto changed = cfg.changed_lines();
  log_ << "config: " << changed.size() << (changed.size() == 1 ? " key differs" : " keys differ")
       << " from the defaults (every key: " << (dump / "config.toml").string() << ")" << (changed.empty() ? "" : ":") << "\n";
  for (const auto& line : changed) log_ << line << "\n";

  const bool on_cuda = resolve_device(plan_, args_);
#ifdef TITAN_WITH_CUDA
  if (on_cuda) select_cuda_device();  // before anything touches a GPU: each rank its own
#endif
  make_tensor_parallel_groups();
  parallel::MeshShape mesh;
  try {
    mesh = parallel::resolve_mesh(static_cast<int>(ranks), plan_.replicate_degree, plan_.shard_degree);
  } catch (const UserError& e) {
    throw UserError(concat(cfg.origin("training.data_parallel_shard_degree"), ": ", e.what()));
  }
  mesh.force_fsdp = plan_.fsdp_on_one_rank && mesh.shard == 1 && mesh.replicate == 1;
  if (on_cuda && mesh.replicate > 1 && plan_.cuda_model == config::RunPlan::CudaModel::legacy)
    throw UserError(concat(cfg.origin("training.data_parallel_replicate_degree"),
                           ": replicas (HSDP, or replicated data parallel) are not built for the legacy CUDA model: set "
                           "training.cuda_model = \"model\", or shard over all ranks (data_parallel_replicate_degree = 1, "
                           "data_parallel_shard_degree = -1)"));
  check_memory_estimate(on_cuda, mesh.shard);
  dp_ = std::make_unique<parallel::DataParallel>(*data_ranks_, mesh, plan_.reshard);
  // Each rank creates (and initialises) only its shards of its TP slices: the same values as a
  // one-rank run's.
  const llama3::TensorParallelRank tp_rank{tp_group_ ? tp_group_->rank() : 0, plan_.tensor_parallel_degree};
  model_ = std::make_unique<llama3::Transformer>(args_, dp_->shard_rank(), mesh.shard, tp_rank);
  dp_->apply(*model_, !on_cuda);
  if (tp_group_) {  // the host model computes on the CPU only; a GPU engine applies TP to its own
    tp_ = std::make_unique<parallel::TensorParallel>(*tp_group_, model_->layout());
    model_->model().set_tensor_parallel(tp_.get(), plan_.loss_parallel);
  }
  model_->init_weights(job_.data.seed);
  model_->set_activation_checkpointing(plan_.ac);
  if (plan_.float8.enabled) {  // applied from outside, as torchtitan's float8 converter swaps modules
    const auto f8 = llama3::select_float8_linears(model_->layout(), plan_.float8.recipe, plan_.float8.filter_fqns);
    model_->model().set_float8_linears(f8);
    float8_linears_ = static_cast<int64_t>(f8.converted.size());
    log_ << llama3::describe(f8, model_->layout()) << (on_cuda ? "" : "; emulated in float32 on the CPU") << "\n";
    if (plan_.float8.fsdp_all_gather) enable_float8_all_gather(f8);
  }
  cuda::DeviceCollectives* shards = device_collectives(on_cuda);
  // One statement each: every rank makes its NCCL communicators in the same order.
  cuda::DeviceCollectives* replicas = replica_collectives(on_cuda);
  cuda::DeviceCollectives* tensor_parallel = tensor_parallel_collectives(on_cuda);
  engine_ = make_engine(plan_, *model_, optimizer_, shards, replicas, tensor_parallel);
  if (plan_.phase_times && engine_->on_cpu())
    log_ << "notice: profiling.phase_times = true: no effect on the CPU backend (use profiling.enable_profiling)\n";
  if (plan_.compile && engine_->on_cpu())
    log_ << "notice: training.compile = true: no effect on the CPU backend (it fuses kernels and graphs the step on a GPU)\n";
  if (engine_->on_cpu()) model_->plan(shape_);
  if (peak_flops_ == 0) peak_flops_ = engine_->peak_flops();
  log_ << "data: " << data_.description << "\n";
  if (job_.model.tokenizer_path != cfg.get_string("model.tokenizer_path"))
    log_ << "tokenizer: " << job_.model.tokenizer_path << " (the Hugging Face folder's, as model.tokenizer_path is unset)\n";
  if (!data_.left_out.empty()) {
    log_ << "data: left out " << data_.left_out.size() << " file(s) whose names hold neither 'train' nor 'validation' "
         << "(where some names hold 'train', only those train):";
    for (const auto& f : data_.left_out) log_ << " " << f;
    log_ << "\n";
  }
  if (job_.validation.enabled && job_.validation.steps == -1 && data_.synthetic)
    throw UserError(concat(cfg.origin("validation.steps"), ": validation.steps = -1 (the whole validation set): synthetic "
                           "data never ends; give a number of batches"));
  auto log_line = [&log](const std::string& line) { log << line << "\n" << std::flush; };
  auto source = make_train_source(data_, job_, args_.vocab_size, log_line);
  if (job_.checkpoint.enabled) {
    checkpoint::ManagerOptions opt;
    opt.folder = (dump / job_.checkpoint.folder).string();
    opt.interval = job_.checkpoint.interval;
    opt.keep_latest_k = job_.checkpoint.keep_latest_k;
    opt.async = job_.checkpoint.async;
    opt.load_step = job_.checkpoint.load_step;
    // Replica 0's ranks write one file per shard and TP slice.
    opt.rank = dp_->shard_rank() * plan_.tensor_parallel_degree + tp_rank.rank;
    opt.world = mesh.shard * plan_.tensor_parallel_degree;
    opt.save_unsliced = tp_rank.rank == 0;
    opt.commit_timeout_seconds = job_.comm_timeout_seconds;
    // Every saving rank tidies its folder at start: hosts may each have their own.
    opt.clean_up = dp_->saves_checkpoint();
    opt.saver = dp_->saves_checkpoint();
    if (group_.size() > 1) {
      save_collectives_ = std::make_unique<GroupSaveCollectives>(group_);
      opt.collectives = save_collectives_.get();
    }
    checkpoints_ = std::make_unique<checkpoint::CheckpointManager>(opt, log_);
    group_.barrier();  // no rank saves before rank 0 has removed left-over incomplete saves
    const auto dir = checkpoints_->resume_dir();
    require_same_on_all_ranks(group_, concat("checkpoint to resume from = ", dir ? std::filesystem::path(*dir).filename().string() : "none", "\n"),
                              "checkpoint");
    if (dir) {
      if (job_.checkpoint.create_seed)  // it would overwrite step-0 with a trained state
        throw UserError(concat("checkpoint.create_seed_checkpoint: ", opt.folder, " already holds ", *dir,
                               "; write the seed into an empty checkpoint folder (a new job.dump_folder)"));
      resume_from(*dir, *source);
      engine_->from_host();
    } else if (!job_.checkpoint.initial_load_path.empty()) {
      initial_load();
    }
    if (dir && !job_.checkpoint.initial_load_path.empty())
      log_ << "checkpoint: " << *dir << " exists, so checkpoint.initial_load_path is not read again\n";
    if (dp_->saves_checkpoint()) checkpoints_->prepare(model_->parameters());
  } else if (!job_.checkpoint.initial_load_path.empty()) {
    initial_load();  // no checkpoint folder to resume from: every start begins there
  }
  // Every rank walks the same global stream and keeps its own rows of each global batch.
  const int64_t rank_rows = shape_.batch * accumulation_;
  loader_ = std::make_unique<data::DataLoader>(std::move(source), shape_.seq, rank_rows * ranks,
                                               rank_rows * data_ranks_->rank(), rank_rows);
  if (group_.rank() == 0)  // one metrics.jsonl and TensorBoard file per run
    logger_ = std::make_unique<metrics::MetricsLogger>(
      metrics::LoggerOptions{dump.string(), job_.metrics.tensorboard, job_.metrics.tb_folder, job_.metrics.color, 0,
                             start_step_ > 1, start_step_ - 1},
      log);
  print_start_summary();
}

// FSDP's host store casts the float8 linears' weight shards to e4m3 before gathering them.
void Trainer::enable_float8_all_gather(const llama3::Float8Linears& f8) {
  if (!dp_->sharded()) {
    log_ << "notice: float8.enable_fsdp_float8_all_gather = true: no FSDP on this run, nothing is gathered\n";
    return;
  }
  std::vector<const Parameter*> weights;
  for (const size_t i : f8.converted) weights.push_back(&model_->parameters()[i]);
  dp_->enable_float8_all_gather(weights, plan_.float8.precompute_scales);
  log_ << "float8: FSDP gathers the " << weights.size() << " float8 linears' weights in e4m3 (one byte an element), "
       << (plan_.float8.precompute_scales ? "their amaxes in one all-reduce per step" : "each weight's amax reduced at its gather")
       << "\n";
}

void Trainer::make_tensor_parallel_groups() {
  const int tp = plan_.tensor_parallel_degree;
  data_ranks_ = &group_;
  if (tp == 1) return;
  const std::string where = cfg_.origin("training.tensor_parallel_degree");
  auto refuse = [&](const std::string& why) {
    throw UserError(concat(where, ": training.tensor_parallel_degree = ", tp, ": ", why));
  };
  if (plan_.float8.enabled) refuse("float8 linears under tensor parallel are a later step: set float8.enable_float8_linear = false");
  const int rank = group_.rank();
  tp_group_ = group_.split(rank / tp, rank);  // neighbouring ranks: one node's NVLink on a GPU cluster
  dp_ranks_ = group_.split(rank % tp, rank);
  data_ranks_ = dp_ranks_.get();
}

void Trainer::lock_run_folders() {
  if (group_.rank() == 0) {
    locks_.push_back(std::make_unique<FolderLock>(job_.dump_folder, "job.dump_folder", log_));
    // The checkpoint folder too, relative or not: another run may name it absolutely from its own
    // dump folder. Not twice: flock refuses a second lock on the same file even in this process.
    const auto dump = std::filesystem::path(job_.dump_folder);
    const auto folder = dump / job_.checkpoint.folder;
    if (job_.checkpoint.enabled) {
      std::error_code ec;
      std::filesystem::create_directories(folder, ec);  // FolderLock reports a failure to create it
      if (!std::filesystem::equivalent(dump, folder, ec))
        locks_.push_back(std::make_unique<FolderLock>(folder.string(), "checkpoint.folder", log_));
    }
  }
  group_.barrier();  // no rank touches the folders before rank 0 owns them
}

// A failed write here costs the record of the config, not the run: warn and go on.
void Trainer::write_resolved_config(const std::string& dump) {
  const auto path = std::filesystem::path(dump) / "config.toml";
  std::ofstream out(path, std::ios::trunc);
  out << cfg_.to_toml();
  out.close();
  if (!out) log_ << "warning: " << path.string() << ": cannot write the resolved config; the run goes on\n";
}

// NCCL over `host`'s ranks: the group itself where it is NCCL already (a torchrun-style world or
// a group split from one), else a communicator made here and kept in `keep`, which is declared
// before the engine so it outlives the model that uses it.
cuda::DeviceCollectives* Trainer::nccl_over(parallel::ProcessGroup& host, std::unique_ptr<parallel::ProcessGroup>& keep) {
#ifdef TITAN_WITH_CUDA
  select_cuda_device();  // NCCL binds to the current device
  if (auto* nccl = dynamic_cast<parallel::NcclGroup*>(&host)) return nccl;
  auto group = parallel::make_nccl_group(host, job_.comm_timeout_seconds);
  cuda::DeviceCollectives* collectives = group.get();
  keep = std::move(group);
  return collectives;
#else
  (void)host;
  (void)keep;
  return nullptr;  // resolve_device has refused CUDA in this build
#endif
}

cuda::DeviceCollectives* Trainer::device_collectives(bool on_cuda) {
  return on_cuda && dp_->sharded() ? nccl_over(dp_->shard_group(), nccl_) : nullptr;
}

cuda::DeviceCollectives* Trainer::tensor_parallel_collectives(bool on_cuda) {
  return on_cuda && tp_group_ ? nccl_over(*tp_group_, nccl_tensor_parallel_) : nullptr;
}

cuda::DeviceCollectives* Trainer::replica_collectives(bool on_cuda) {
  return on_cuda && dp_->mesh().replicate > 1 ? nccl_over(dp_->replicate_group(), nccl_replicas_) : nullptr;
}

// Refuses, before allocating anything, a run whose estimate exceeds the device's memory.
void Trainer::check_memory_estimate(bool cuda, int shards) const {
  auto e = estimate_memory(args_, shape_, plan_.ac, cuda ? cuda_estimate_backend(plan_) : EstimateBackend::cpu, shards,
                           plan_.keep_gathered_blocks, plan_.attention, runs_float8_linears(plan_, args_),
                           plan_.tensor_parallel_degree, plan_.loss_parallel);
  if (!cuda)
    e.buffers += async_checkpoint_bytes(job_.checkpoint, args_, shards * plan_.tensor_parallel_degree) +
                 float8_all_gather_bytes(plan_, args_, shards);
  else
    e.buffers += float8_all_gather_bytes(plan_, args_, shards, true);
  const double have = device_memory_bytes(cuda);
  if (e.total() <= have || job_.skip_memory_check) return;
  throw UserError(concat(format_estimate(e, cuda ? "memory estimate (GPU)" : "memory estimate (CPU)", have),
                         ": does not fit; lower training.batch_size or training.seq_len",
                         cuda ? "" : ", set activation_checkpoint.mode = \"full\"",
                         " or shard over more ranks (FSDP); training.skip_memory_check = true tries anyway"));
}

std::string Trainer::model_signature() const {
  return checkpoint::model_signature(args_, job_.model.flavor,
                                     data_.tokenizer ? std::to_string(data_.tokenizer->fingerprint()) : "none");
}

// A checkpoint (or HF folder) whose model signature differs from this run's is refused, naming
// the first difference. `same_flavor`: the flavor's name counts too (an initial load compares
// shapes only: an HF folder's flavor is whichever titan flavor has its shape).
void Trainer::require_same_model(const std::string& dir, const std::string& signature, bool same_flavor,
                                 const std::string& hint) const {
  const auto saved = nlohmann::json::parse(signature), now = nlohmann::json::parse(model_signature());
  for (const auto& [key, value] : now.items()) {
    // A converted (imported) checkpoint does not know the tokenizer; everything else must match.
    if (key == "tokenizer" && saved.value("tokenizer", "") == "unknown") continue;
    if (key == "flavor" && !same_flavor) continue;
    if (!saved.contains(key) || saved[key] != value)
      throw UserError(concat(dir, ": saved for a different model: ", key, " was ",
                             saved.contains(key) ? saved[key].dump() : "absent", ", this run has ", value.dump(), " (", hint,
                             ")"));
  }
  for (const auto& [key, value] : saved.items())  // what only the checkpoint has (RoPE scaling) counts too
    if (!now.contains(key))
      throw UserError(concat(dir, ": saved for a different model: ", key, " was ", value.dump(),
                             ", this run has none (set the model keys that give it, e.g. model.rope_scaling_factor; or ", hint,
                             ")"));
}

const char* const kInitialLoadHint = "set the model keys to the folder's model, or checkpoint.initial_load_path to another";

// checkpoint.initial_load_path: the weights only (step 1, a fresh optimizer, the data from the
// start), from a titan step folder or an HF folder; each rank takes its own rows.
void Trainer::initial_load() {
  const std::string& path = job_.checkpoint.initial_load_path;
  if (job_.checkpoint.initial_load_in_hf) {
    const auto m = checkpoint::read_hf_config(path);
    require_same_model(path, checkpoint::model_signature(m.args, m.flavor, "unknown"), false, kInitialLoadHint);
    // Tensor by tensor: each rank keeps its rows, never the whole model.
    checkpoint::for_each_hf_weight(path, m.args, [&](const llama3::TensorSpec& spec, std::vector<float>& w) {
      Parameter& p = model_->parameter(spec.name);
      float* dst = p.master.f32();
      for (int64_t i = 0; i < p.master.numel(); ++i) dst[i] = w[static_cast<size_t>(p.global_index(i))];
    });
  } else {
    const auto meta = checkpoint::read_metadata(path);
    require_same_model(path, meta.state.model_signature, false, kInitialLoadHint);
    checkpoint::load_parameters(path, meta, model_->parameters(), false);
  }
  engine_->from_host();
  log_ << "checkpoint: started from the weights of " << path << (job_.checkpoint.initial_load_in_hf ? " (Hugging Face)" : "")
       << " (checkpoint.initial_load_path; step 1, a fresh optimizer)\n" << std::flush;
}

void Trainer::resume_from(const std::string& dir, data::WindowSource& source) {
  const auto meta = checkpoint::read_metadata(dir);
  require_same_model(dir, meta.state.model_signature, true,
                     "start a new dump_folder, or set checkpoint.enable_checkpoint = false");
  checkpoint::load_parameters(dir, meta, model_->parameters(), true);
  optimizer_.set_steps_taken(meta.has_optimizer ? meta.state.step : 0);
  if (!meta.state.data_state.empty()) {
    const std::string where = dir + "/metadata.json";
    const auto state = data::StreamState::from_json(meta.state.data_state, where);
    for (const int32_t t : state.carry)
      if (t < 0 || t >= args_.vocab_size)
        throw UserError(concat(where, ": malformed data loader state: token ", t, " is outside the vocabulary [0, ",
                               args_.vocab_size, ")"));
    source.restore(state);
  }
  start_step_ = meta.state.step + 1;
  if (meta.state.global_batch > 0 && meta.state.global_batch != global_batch())
    log_ << "checkpoint: the global batch changed since the save: " << meta.state.global_batch << " -> " << global_batch()
         << " sequences of " << shape_.seq << " tokens per step (training.batch_size x ranks x accumulation); "
         << "the data stream goes on where it stopped, in batches of the new size\n";
  // Report what changed since the checkpoint (steps, schedule, logging may; the model may not).
  std::istringstream before(meta.state.config_toml), after(cfg_.to_toml());
  std::map<std::string, std::string> old_values;
  std::string section, line;
  for (; std::getline(before, line);) {
    if (line.rfind('[', 0) == 0) section = line;
    else if (auto eq = line.find(" = "); eq != std::string::npos) old_values[section + line.substr(0, eq)] = line.substr(eq + 3);
  }
  for (section.clear(); std::getline(after, line);) {
    if (line.rfind('[', 0) == 0) section = line;
    else if (auto eq = line.find(" = "); eq != std::string::npos) {
      auto it = old_values.find(section + line.substr(0, eq));
      if (it != old_values.end() && it->second != line.substr(eq + 3) && line.rfind("load_step", 0) != 0)
        log_ << "checkpoint: config changed since the save: " << section << " " << line.substr(0, eq) << ": "
             << it->second << " -> " << line.substr(eq + 3) << "\n";
    }
  }
  log_ << "checkpoint: resumed from " << dir << " (step " << meta.state.step << (meta.has_optimizer ? "" : ", weights only")
       << (meta.world != 1 ? concat(", saved by ", meta.world, " ranks") : "") << ")\n" << std::flush;
}

// This rank's squared gradient norm, summed over its tensor-parallel group (the replicated
// tensors counted once); FSDP's shards are summed after.
double Trainer::grad_sq_over_tensor_parallel() {
  if (tp_ && engine_->on_cpu()) return tp_->grad_sq(model_->parameters());
  double sq = engine_->grad_sq_sum();  // a GPU engine under TP: this rank's share
  if (tp_group_) tp_group_->all_reduce_sum(&sq, 1);
  return sq;
}

double Trainer::tensor_parallel_volume() const {
  return parallel::TensorParallel::analytic_volume(args_, shape_, plan_.ac, plan_.tensor_parallel_degree, accumulation_,
                                                   dp_->mesh().shard, plan_.loss_parallel, engine_->on_cpu() ? 4 : 2);
}

int64_t Trainer::global_batch() const { return shape_.batch * accumulation_ * data_ranks_->size(); }

void Trainer::save_checkpoint(int64_t step) {
  // Every rank takes part (the entries move through the process group); replicas write nothing.
  engine_->to_host();
  checkpoint::TrainState st{step, loader_ ? loader_->state().to_json() : "", model_signature(), cfg_.to_toml(),
                            global_batch()};
  checkpoints_->save(step, model_->parameters(), st);
}

void Trainer::export_weights(int64_t step, const std::string& name, int64_t max_shard_bytes) {
  if (group_.rank() != 0) return;
  checkpoints_->wait();
  engine_->to_host();
  const auto folder = std::filesystem::path(job_.dump_folder) / job_.checkpoint.folder;
  const auto dir = folder / (name + std::to_string(step));
  std::unique_ptr<llama3::Transformer> whole;  // sharded: the whole model, read from this step's checkpoint
  if (dp_->sharded() || tp_) {
    const auto step_dir = (folder / checkpoint::step_dir_name(step)).string();
    whole = std::make_unique<llama3::Transformer>(args_);
    checkpoint::load_parameters(step_dir, checkpoint::read_metadata(step_dir), whole->parameters(), false);
  }
  checkpoint::export_hf(whole ? whole->parameters() : model_->parameters(), args_, dir.string(), job_.checkpoint.export_bf16,
                        data_.tokenizer ? data_.tokenizer->bos_id() : -1, data_.tokenizer ? data_.tokenizer->eos_id() : -1,
                        max_shard_bytes);
  if (data_.tokenizer) checkpoint::export_hf_tokenizer(dir.string(), job_.model.tokenizer_path, *data_.tokenizer);
  log_ << "checkpoint: exported the model (Hugging Face safetensors + config.json) to " << dir.string() << "\n";
}

void Trainer::print_start_summary() {
  auto mem = model_->memory();
  if (!engine_->on_cpu()) {  // what the GPU holds: the CUDA plan's terms, as titan estimate gives them
    const auto e = estimate_memory(args_, shape_, plan_.ac, cuda_estimate_backend(plan_), dp_->mesh().shard,
                                   plan_.keep_gathered_blocks, plan_.attention, runs_float8_linears(plan_, args_),
                                   plan_.tensor_parallel_degree, plan_.loss_parallel);
    mem.parameter_bytes = static_cast<size_t>(e.parameters);
    mem.gradient_bytes = static_cast<size_t>(e.gradients);
    mem.optimizer_bytes = static_cast<size_t>(e.optimizer);
    mem.activation_bytes = static_cast<size_t>(e.activations + e.buffers);
  }
  log_ << "model: llama3 " << job_.model.flavor << " (dim " << args_.dim << ", layers "
       << args_.n_layers << ", heads " << args_.n_heads << ", kv heads " << args_.n_kv_heads << ", ffn "
       << args_.ffn_hidden() << ", vocab " << args_.vocab_size << ")\n";
  char line[256];
  std::snprintf(line, sizeof line, "parameters: %lld (%lld non-embedding)\n",
                static_cast<long long>(mem.parameters),
                static_cast<long long>(mem.parameters - mem.embedding_parameters));
  log_ << line;
  std::snprintf(line, sizeof line,
                "memory (GiB%s): parameters %.3f, gradients %.3f, optimizer %.3f, activations %.3f "
                "(batch %lld x seq %lld)\n", group_.size() > 1 ? " per rank" : "",
                gib(mem.parameter_bytes), gib(mem.gradient_bytes), gib(mem.optimizer_bytes),
                gib(mem.activation_bytes), static_cast<long long>(shape_.batch),
                static_cast<long long>(shape_.seq));
  log_ << line;
  if (accumulation_ > 1)
    log_ << "gradient accumulation: " << accumulation_ << " micro-batches of " << shape_.batch
         << " per step (global batch " << accumulation_ * shape_.batch << ")\n";
  log_ << "device: " << engine_->description() << "\n";
  log_ << "state per rank (bytes; rank 0's shards are the largest): parameters " << mem.parameter_bytes
       << ", gradients " << mem.gradient_bytes << ", optimizer " << mem.optimizer_bytes << "\n";
  if (group_.size() == 1 && dp_->sharded()) log_ << "data parallel: " << dp_->describe() << "\n";
  if (group_.size() > 1) {
    log_ << "ranks: " << group_.size() << " (" << group_.backend() << "), "
         << (tp_group_ ? concat(data_ranks_->size(), " data-parallel x ", tp_group_->size(), " tensor-parallel; data parallel: ") : "")
         << dp_->describe() << "\n";
    if (tp_group_)
      log_ << "tensor parallel: " << tp_group_->size() << " neighbouring ranks per group (" << data_ranks_->size()
           << " data-parallel): wq, wk, wv, w1, w3 and the classifier sliced column-wise, wo and w2 row-wise, the "
              "embedding over the vocabulary; sequence parallel between them, "
           << (plan_.loss_parallel ? "loss parallel" : "the logits gathered (no loss parallel)") << "\n";
    char volume[160];
    std::snprintf(volume, sizeof volume,
                  "communication per rank per step (analytic, %s gathers): %.3f MiB\n",
                  plan_.float8.fsdp_all_gather ? (engine_->on_cpu() ? "e4m3 float8-linear and float32 other"
                                                                     : "e4m3 float8-linear and bfloat16 other")
                  : engine_->on_cpu()          ? "float32"
                                               : "bfloat16",
                  (dp_->analytic_volume(accumulation_, engine_->on_cpu() ? 4 : 2) + tensor_parallel_volume()) /
                      (1024.0 * 1024.0));
    log_ << volume;
  }
  log_ << std::flush;
}

StepMetrics Trainer::train_step(int64_t step) {
  Timer timer;
  StepMetrics m;
  m.step = step;
  data::Batch batch;
  {
    Tracer::Span span(&tracer_, "data");
    batch = loader_->next();
  }
  m.data_seconds = timer.seconds();
  // Every micro-batch's loss is scaled by 1 / (tokens of the global batch), so the accumulated
  // gradient is that of the global batch's mean loss.
  const float grad_scale = 1.0f / static_cast<float>(shape_.rows() * accumulation_ * data_ranks_->size());
  m.lr = optimizer_.config().lr * job_.schedule.factor(step - 1);
  Engine::StepOutcome fused;
  Tracer::Span step_span(&tracer_, "step (forward, backward, optimizer)");
  if (accumulation_ == 1 && engine_->fused_step(batch.tokens.data(), batch.labels.data(), shape_, grad_scale, m.lr,
                                                job_.max_norm, fused)) {
    m.loss = fused.loss_sum / static_cast<double>(std::max<int64_t>(1, fused.count));
    m.grad_norm = fused.grad_norm;
    m.skipped = !finite_or_stop(step, m);  // the engine has already skipped the update if not finite
    m.step_seconds = timer.seconds();
    return m;
  }
  engine_->zero_grad();
  double loss_sum = 0;
  int64_t count = 0;
  for (int64_t micro = 0; micro < accumulation_; ++micro) {
    const int64_t offset = micro * shape_.rows();
    const auto r = engine_->forward_backward(batch.tokens.data() + offset, batch.labels.data() + offset, shape_,
                                             grad_scale, &tracer_);
    loss_sum += r.loss_sum;
    count += r.count;
  }
  reduce_loss(loss_sum, count);
  if (tp_group_) {
    Tracer::Span span(&tracer_, "replicated gradients all-reduce across tensor-parallel ranks");
    if (engine_->on_cpu()) tp_->reduce_replicated_gradients(model_->parameters());
    else engine_->reduce_tensor_parallel_gradients();
  }
  {
    Tracer::Span span(&tracer_, "gradient all-reduce across replicas");
    if (engine_->on_cpu()) dp_->reduce_gradients(model_->parameters());
    else engine_->reduce_replica_gradients();
  }
  m.loss = loss_sum / static_cast<double>(std::max<int64_t>(1, count));
  Tracer::Span span(&tracer_, "optimizer (grad norm, clipping, AdamW)");
  m.grad_norm = std::sqrt(dp_->global_grad_sq(grad_sq_over_tensor_parallel()));
  if (finite_or_stop(step, m)) engine_->update(m.grad_norm, job_.max_norm, m.lr);
  else m.skipped = true;
  dp_->weights_changed();  // FP8-gathered weights take new scales
  m.step_seconds = timer.seconds();
  return m;
}

void Trainer::reduce_loss(double& loss_sum, int64_t& count) {
  if (data_ranks_->size() == 1) return;  // tensor-parallel ranks hold the same loss
  double sums[2] = {loss_sum, static_cast<double>(count)};
  data_ranks_->all_reduce_sum(sums, 2);
  loss_sum = sums[0];
  count = static_cast<int64_t>(sums[1]);
}

void Trainer::fill_comm(metrics::LogRecord& r, double window_bytes, int64_t window_steps) {
  if (group_.size() == 1) return;
  const int n = group_.size();
  std::vector<double> per_rank(static_cast<size_t>(n), 0.0);  // summing one-hot vectors gathers them
  per_rank[static_cast<size_t>(group_.rank())] = window_bytes / static_cast<double>(window_steps);
  group_.all_reduce_sum(per_rank.data(), n);
  double sum = 0;
  for (double b : per_rank) {
    sum += b;
    r.comm_bytes_max = std::max(r.comm_bytes_max, b);
  }
  r.comm_bytes = sum / n;
}

bool Trainer::finite_or_stop(int64_t step, const StepMetrics& m) {
  if (std::isfinite(m.loss) && std::isfinite(m.grad_norm)) return true;
  if (job_.stop_on_nonfinite)
    throw std::runtime_error(concat("step ", step, ": loss ", m.loss, ", grad norm ", m.grad_norm,
                                    " is not finite; stopping (lower optimizer.lr, or set training.on_nonfinite = skip)"));
  log_ << "warning: step " << step << ": loss " << m.loss << ", grad norm " << m.grad_norm
       << " is not finite; update skipped\n";
  return false;
}

double Trainer::validation_loss() {
  auto source = make_validation_source(data_, job_, args_.vocab_size);
  const int64_t steps = job_.validation.steps, seq = shape_.seq;
  const bool whole_set = steps == -1;  // every whole batch before the data wraps (at least one)
  std::vector<int32_t> window(seq + 1), tokens(shape_.rows()), labels(shape_.rows());
  double loss_sum = 0;
  int64_t count = 0, batches = 0;
  for (int64_t s = 0; whole_set || s < steps; ++s) {
    for (int64_t r = 0; r < shape_.batch; ++r) {
      source->next(window.data());
      std::copy_n(window.begin(), seq, tokens.begin() + r * seq);
      std::copy_n(window.begin() + 1, seq, labels.begin() + r * seq);
    }
    const bool wrapped = whole_set && source->state().epoch > 0;
    if (wrapped && s > 0) break;
    const auto res = engine_->forward_loss(tokens.data(), labels.data(), shape_);
    loss_sum += res.loss_sum;
    count += res.count;
    ++batches;
    if (wrapped) break;
  }
  if (whole_set && !validation_size_logged_) {
    log_ << "validation: the whole set (validation.steps = -1) is " << batches << " batch" << (batches == 1 ? "" : "es")
         << " of " << shape_.batch << " x " << shape_.seq << " tokens\n";
    validation_size_logged_ = true;
  }
  return loss_sum / static_cast<double>(std::max<int64_t>(1, count));
}

metrics::LogRecord Trainer::make_record(const StepMetrics& m, double window_seconds, double window_data_seconds,
                                        int64_t window_steps, double elapsed) const {
  metrics::LogRecord r;
  r.step = m.step;
  r.steps = job_.steps;
  r.loss = r.loss_max = m.loss;  // one rank: the mean and the max across ranks are the same
  r.grad_norm = m.grad_norm;
  r.lr = m.lr;
  // Per device, as torchtitan counts it: a tensor-parallel group shares its tokens.
  r.tps = static_cast<double>(window_steps * shape_.rows() * accumulation_) / window_seconds /
          static_cast<double>(plan_.tensor_parallel_degree);
  r.tflops = flops_per_token_ * r.tps / 1e12;
  if (peak_flops_ > 0) r.mfu = 100.0 * r.tflops * 1e12 / peak_flops_;
  const auto mem = engine_->memory();
  r.mem_alloc_retries = mem.alloc_retries;
  r.mem_ooms = mem.ooms;
  r.mem_active_gib = mem.active_gib;
  r.mem_reserved_gib = mem.reserved_gib;
  r.mem_active_pct = 100.0 * mem.active_gib / mem.total_gib;
  r.mem_reserved_pct = 100.0 * mem.reserved_gib / mem.total_gib;
  r.step_seconds = window_seconds / static_cast<double>(window_steps);
  r.float8_linears = float8_linears_;
  r.data_seconds = window_data_seconds / static_cast<double>(window_steps);
  r.data_pct = 100.0 * window_data_seconds / window_seconds;
  r.elapsed_s = elapsed;
  r.eta_s = r.step_seconds * static_cast<double>(r.steps - m.step);
  return r;
}

void Trainer::write_trace(int64_t step) {
  const auto dir = std::filesystem::path(job_.dump_folder) / job_.profiling.traces_folder / ("iteration_" + std::to_string(step));
  tracer_.write_chrome_trace((dir / "rank0_trace.json").string());
  tracer_.clear();
}

std::vector<StepMetrics> Trainer::run() {
  const int64_t steps = job_.steps, log_freq = job_.metrics.log_freq;
  const bool validate = job_.validation.enabled, profile = job_.profiling.enabled;
  const int64_t val_freq = job_.validation.freq, profile_freq = job_.profiling.freq;
  set_stop_phase(StopPhase::training);  // a first stop signal now waits for the step in progress
  std::vector<StepMetrics> history;
  if (checkpoints_ && job_.checkpoint.create_seed) {
    save_checkpoint(0);
    checkpoints_->wait();
    log_ << "checkpoint: wrote the seed checkpoint (step 0); exiting\n";
    return history;
  }
  if (start_step_ > steps) log_ << "nothing to do: the checkpoint is at step " << start_step_ - 1 << " of " << steps << "\n";
  ProgressIndicator progress(group_.rank() == 0 ? std::cerr : log_, 10.0);
  Timer total;
  double window_seconds = 0, window_data = 0, window_bytes = 0;
  int64_t window_steps = 0;
  for (int64_t step = start_step_; step <= steps; ++step) {
    const bool trace = profile && step % profile_freq == 0;
    tracer_.set_recording(trace);
    progress.start_step(step);
    history.push_back(train_step(step));
    if (trace && group_.rank() == 0) write_trace(step);
    tracer_.set_recording(false);
    window_seconds += history.back().step_seconds;
    window_data += history.back().data_seconds;
    window_bytes += dp_->take_volume().total() + engine_->take_comm_bytes() + (tp_ ? tp_->take_volume().total() : 0.0);
    ++window_steps;
    double stop = stop_requested() != 0 ? 1.0 : 0.0;
    group_.all_reduce_sum(&stop, 1);  // every rank stops after the same step
    const bool stopping = stop > 0;
    if (step == 1 || step % log_freq == 0 || step == steps || stopping) {
      auto record = make_record(history.back(), window_seconds, window_data, window_steps, total.seconds());
      fill_comm(record, window_bytes, window_steps);  // a collective: every rank takes part
      if (logger_) logger_->log(record);
      window_seconds = window_data = window_bytes = 0;
      window_steps = 0;
    }
    if (validate && (step % val_freq == 0 || step == steps)) {
      const double loss = validation_loss();  // every rank computes it (same data): no collective needed
      if (logger_) logger_->log_validation(step, loss);
    }
    if (checkpoints_ && (checkpoints_->due(step) || step == steps || stopping)) save_checkpoint(step);
    if (checkpoints_ && step == steps && job_.checkpoint.export_weights) export_weights(step, "export-step-", 0);
    if (checkpoints_ && step == steps && job_.checkpoint.last_save_in_hf)  // sharded as Meta publishes (5 GB files)
      export_weights(step, "hf-step-", job_.checkpoint.hf_shard_bytes);
    if (stopping) {
      log_ << "received " << (stop_requested() != 0 ? signal_name(stop_requested()) : "a stop from another rank")
           << ": stopped cleanly after step "
           << step << " of " << steps << "\n" << std::flush;
      break;
    }
  }
  if (checkpoints_) checkpoints_->wait();
  if (dp_->sharded())
    log_ << "FSDP: at most " << std::max(dp_->peak_unsharded_bytes(), engine_->peak_unsharded_bytes())
         << " bytes of whole weights and gradients were gathered at once on rank 0\n";
  if (plan_.float8.fsdp_all_gather && dp_->sharded())
    log_ << "FP8 all-gather: " << dp_->float8_amax_reductions() + engine_->float8_amax_reductions()
         << " weight-amax all-reduce(s) over "
         << history.size() << " step(s) on rank 0" << (plan_.float8.precompute_scales ? " (precomputed: one per step)" : "")
         << "\n";
  log_ << engine_->phase_report() << std::flush;
  set_stop_phase(StopPhase::starting);
  return history;
}

int train_main(const std::vector<std::string>& args) {
  install_stop_handlers();  // before anything that can wait: reading the config, data, a collective
  set_stop_phase(StopPhase::starting);
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
  // The world group comes before the trainer (which resolves the other keys) and needs only its timeout.
  auto group = parallel::make_world_group(cfg.get_real("comm.train_timeout_seconds"));
  std::ostream quiet(nullptr);  // ranks other than 0 print nothing but errors
  try {
    Trainer trainer(cfg, group->rank() == 0 ? std::cout : quiet, group.get());
    trainer.run();
  } catch (const std::exception& e) {
    if (group->size() == 1) throw;
    // The other ranks may be waiting in a collective: name this rank, then end them all.
    std::cerr << "titan: error: rank " << group->rank() << " of " << group->size() << ": " << e.what() << "\n"
              << std::flush;
    group->abort(2);
  }
  return 0;
}

}  // namespace titan::train
