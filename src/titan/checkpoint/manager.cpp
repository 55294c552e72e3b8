#include "titan/checkpoint/manager.h"

#include <algorithm>
#include <cstring>
#include <vector>
#include <filesystem>

#include "titan/core/error.h"
#include "titan/core/timer.h"

namespace titan::checkpoint {

namespace fs = std::filesystem;

CheckpointManager::CheckpointManager(ManagerOptions options, std::ostream& log) : opt_(std::move(options)), log_(log) {
  std::error_code ec;
  fs::create_directories(opt_.folder, ec);
  if (ec) throw UserError(concat("checkpoint.folder: cannot create '", opt_.folder, "': ", ec.message()));
  // Left-overs of saves that never completed (a crash mid-save) are not checkpoints.
  if (!opt_.clean_up) return;
  std::vector<fs::path> entries;
  fs::directory_iterator it(opt_.folder, ec);
  for (; !ec && it != fs::directory_iterator(); it.increment(ec)) entries.push_back(it->path());
  if (ec) throw UserError(concat(opt_.folder, ": cannot list the checkpoint folder: ", ec.message()));
  auto ends_with = [](const std::string& s, const std::string& tail) {
    return s.size() > tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
  };
  for (const auto& path : entries) {
    const std::string name = path.filename().string();
    if (name.rfind("step-", 0) != 0) continue;
    if (ends_with(name, kReplacedSuffix)) {  // a replacement that never arrived: the earlier save comes back
      const fs::path step = path.string().substr(0, path.string().size() - std::strlen(kReplacedSuffix));
      std::error_code sec;
      if (fs::symlink_status(step, sec).type() == fs::file_type::not_found) {
        log_ << "checkpoint: restoring " << step.string() << " (its replacement was interrupted)\n";
        fs::rename(path, step, ec);
        if (ec) throw UserError(concat(path.string(), ": cannot restore: ", ec.message()));
        continue;
      }
    }
    const bool tmp = ends_with(name, ".tmp"), deleting = ends_with(name, ".deleting") || ends_with(name, kReplacedSuffix);
    if (tmp || deleting) {
      log_ << "checkpoint: removing " << (tmp ? "incomplete save " : "earlier save already replaced or deleted ")
           << path.string() << "\n";
      fs::remove_all(path, ec);
    }
  }
}

CheckpointManager::~CheckpointManager() {
  if (worker_.joinable()) worker_.join();
}

std::optional<std::string> CheckpointManager::resume_dir() const {
  const auto steps = list_steps(opt_.folder);
  if (opt_.load_step >= 0) {
    if (std::find(steps.begin(), steps.end(), opt_.load_step) == steps.end())
      throw UserError(concat("checkpoint.load_step = ", opt_.load_step, ": no complete checkpoint ",
                             step_dir_name(opt_.load_step), " in ", opt_.folder));
    if (steps.back() > opt_.load_step)
      log_ << "warning: checkpoint.load_step = " << opt_.load_step << " resumes before " << step_dir_name(steps.back())
           << "; this run's saves replace the later checkpoints of the same steps\n";
    return (fs::path(opt_.folder) / step_dir_name(opt_.load_step)).string();
  }
  if (steps.empty()) return std::nullopt;
  return (fs::path(opt_.folder) / step_dir_name(steps.back())).string();
}

void CheckpointManager::write(int64_t step, const std::deque<Parameter>& params, const TrainState& state, bool optimizer) {
  const std::string final_dir = (fs::path(opt_.folder) / step_dir_name(step)).string();
  const std::string tmp = final_dir + ".tmp";
  Metadata meta;
  meta.world = opt_.world;
  meta.state = state;
  meta.has_optimizer = optimizer;
  try {
    meta.shards = write_rank_file(tmp, opt_.rank, params, optimizer, opt_.save_unsliced);
  } catch (const NonFiniteState& e) {
    const auto steps = list_steps(opt_.folder);
    throw UserError(concat("step ", step, ": not saved: ", e.what(), "; ",
                           steps.empty() ? std::string("no earlier checkpoint is saved; start again with a lower optimizer.lr")
                                         : concat("the latest finite checkpoint is ", step_dir_name(steps.back()),
                                                  ": resume from it with checkpoint.load_step = ", steps.back(),
                                                  " and a lower optimizer.lr")));
  }
  if (opt_.world > 1) {
    write_rank_entries(tmp, opt_.rank, meta.shards);
    if (opt_.rank != 0) return;
    meta.shards = collect_rank_entries(tmp, opt_.world, opt_.commit_timeout_seconds);
  }
  // Only a deliberate resume from an earlier step (checkpoint.load_step) replaces a saved step.
  commit(tmp, final_dir, meta, opt_.load_step >= 0 && step > opt_.load_step);
  prune();
}

double CheckpointManager::save(int64_t step, const std::deque<Parameter>& params, const TrainState& state, bool optimizer) {
  Timer stall;
  wait();
  if (!opt_.async) {
    write(step, params, state, optimizer);
    log_ << "checkpoint: saved step " << step << " in " << stall.seconds() << " s\n" << std::flush;
    return stall.seconds();
  }
  // Host snapshot: the loop may change the parameters as soon as this returns. The buffers are
  // kept for the next save: allocating (and first-touching) gigabytes each time cost more than
  // writing synchronously.
  prepare(params);
  for (size_t i = 0; i < params.size(); ++i) {
    const Parameter& p = params[i];
    Parameter& c = (*snapshot_)[i];
    std::memcpy(c.master.data<char>(), p.master.data<char>(), p.master.bytes());
    if (optimizer) {
      std::memcpy(c.exp_avg.data<char>(), p.exp_avg.data<char>(), p.exp_avg.bytes());
      std::memcpy(c.exp_avg_sq.data<char>(), p.exp_avg_sq.data<char>(), p.exp_avg_sq.bytes());
    }
  }
  const double stalled = stall.seconds();
  worker_ = std::thread([this, step, state, optimizer] {
    try {
      Timer t;
      write(step, *snapshot_, state, optimizer);
      log_ << "checkpoint: saved step " << step << " in the background in " << t.seconds() << " s\n" << std::flush;
    } catch (...) {
      error_ = std::current_exception();
    }
  });
  return stalled;
}

void CheckpointManager::prepare(const std::deque<Parameter>& params) {
  if (!opt_.async || (snapshot_ && snapshot_->size() == params.size())) return;
  snapshot_ = std::make_unique<std::deque<Parameter>>();
  for (const auto& p : params) {
    Parameter c;
    c.name = p.name;
    c.global_shape = p.global_shape;
    c.slice = p.slice;
    c.rank = p.rank;
    c.world = p.world;
    c.rows = p.rows;
    c.master = Tensor::zeros(p.master.shape());
    c.exp_avg = Tensor::zeros(p.exp_avg.shape());
    c.exp_avg_sq = Tensor::zeros(p.exp_avg_sq.shape());
    snapshot_->push_back(std::move(c));
  }
}

void CheckpointManager::wait() {
  if (worker_.joinable()) worker_.join();
  if (error_) {
    auto e = error_;
    error_ = nullptr;
    std::rethrow_exception(e);
  }
}

void CheckpointManager::prune() {
  if (opt_.keep_latest_k <= 0) return;
  const auto steps = list_steps(opt_.folder);
  for (size_t i = 0; i + static_cast<size_t>(opt_.keep_latest_k) < steps.size(); ++i) {
    // Renamed first, so a crash mid-delete never leaves a half-deleted folder that looks complete.
    const fs::path dir = fs::path(opt_.folder) / step_dir_name(steps[i]);
    const fs::path doomed = dir.string() + ".deleting";
    std::error_code ec;
    fs::rename(dir, doomed, ec);
    if (!ec) fs::remove_all(doomed, ec);
  }
}

}  // namespace titan::checkpoint
