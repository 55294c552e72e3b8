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
        // Ranks sharing the folder tidy it at once: another may have restored it first.
        if (ec && fs::exists(path)) throw UserError(concat(path.string(), ": cannot restore: ", ec.message()));
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

CheckpointManager::Plan CheckpointManager::plan(int64_t step, const std::deque<Parameter>& params,
                                                const TrainState& state, bool optimizer) {
  const std::string tmp = (fs::path(opt_.folder) / step_dir_name(step)).string() + ".tmp";
  Plan p;
  p.meta.world = opt_.world;
  p.meta.state = state;
  p.meta.has_optimizer = optimizer;
  std::vector<ShardEntry> mine;
  std::string failure;  // a non-finite state: every rank must still take part before it stops
  if (opt_.saver) {
    try {
      mine = plan_rank_file(tmp, opt_.rank, params, optimizer, opt_.save_unsliced);
    } catch (const NonFiniteState& e) {
      const auto steps = list_steps(opt_.folder);
      failure = concat("step ", step, ": not saved: ", e.what(), "; ",
                       steps.empty() ? std::string("no earlier checkpoint is saved; start again with a lower optimizer.lr")
                                     : concat("the latest finite checkpoint is ", step_dir_name(steps.back()),
                                              ": resume from it with checkpoint.load_step = ", steps.back(),
                                              " and a lower optimizer.lr"));
    }
  }
  if (!opt_.collectives) {
    if (!failure.empty()) throw UserError(failure);
    p.meta.shards = std::move(mine);
    p.folder_writers = {opt_.rank};
    return p;
  }
  // Entries through the process group (a rank that failed sends "!" and its reason), and rank
  // 0's state with them: every folder's metadata.json is the same file, whatever each rank's
  // own config says of per-host keys (its checkpoint folder).
  const std::string own = failure.empty() ? entries_text(mine) : "!" + failure;
  const auto all = opt_.collectives->all_gather(opt_.rank == 0 && opt_.saver ? state_text(state) + "\n" + own : own);
  for (size_t r = 0; r < all.size(); ++r) {
    std::string text = all[r];
    if (r == 0) {
      const size_t cut = text.find('\n');
      TITAN_CHECK(cut != std::string::npos, "rank 0's checkpoint entries without its state");
      p.meta.state = state_from_text(text.substr(0, cut), "rank 0's checkpoint state");
      text = text.substr(cut + 1);
    }
    if (!text.empty() && text[0] == '!') throw UserError(text.substr(1));
    auto part = entries_from_text(text, concat("rank ", r, "'s checkpoint entries"));
    p.meta.shards.insert(p.meta.shards.end(), part.begin(), part.end());
  }
  // Which writers share this folder: marks made before anyone looks.
  if (opt_.saver) mark_writer(tmp, opt_.rank);
  opt_.collectives->barrier();
  if (opt_.saver) p.folder_writers = folder_writers(tmp);
  return p;
}

void CheckpointManager::write_and_commit(int64_t step, const std::deque<Parameter>& params, const Plan& plan,
                                         bool optimizer) {
  if (!opt_.saver) return;
  const std::string final_dir = (fs::path(opt_.folder) / step_dir_name(step)).string();
  const std::string tmp = final_dir + ".tmp";
  write_rank_data(tmp, opt_.rank, params, optimizer, opt_.save_unsliced);
  if (opt_.collectives) mark_written(tmp, opt_.rank);
  if (plan.folder_writers.empty() || plan.folder_writers.front() != opt_.rank) return;  // another rank commits
  if (opt_.collectives) wait_for_writers(tmp, plan.folder_writers, opt_.world, opt_.commit_timeout_seconds);
  // Only a deliberate resume from an earlier step (checkpoint.load_step) replaces a saved step.
  commit(tmp, final_dir, plan.meta, opt_.load_step >= 0 && step > opt_.load_step);
  prune();
}

double CheckpointManager::save(int64_t step, const std::deque<Parameter>& params, const TrainState& state, bool optimizer) {
  Timer stall;
  wait();
  if (!opt_.async || !opt_.saver) {
    const Plan p = plan(step, params, state, optimizer);
    write_and_commit(step, params, p, optimizer);
    if (opt_.saver) log_ << "checkpoint: saved step " << step << " in " << stall.seconds() << " s\n" << std::flush;
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
  // The entries (and their exchange, a collective) here; the bytes in the background.
  auto planned = std::make_shared<Plan>(plan(step, *snapshot_, state, optimizer));
  const double stalled = stall.seconds();
  worker_ = std::thread([this, step, planned, optimizer] {
    try {
      Timer t;
      write_and_commit(step, *snapshot_, *planned, optimizer);
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
