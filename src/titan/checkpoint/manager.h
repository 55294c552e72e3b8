// When and how a run saves and resumes: interval saves, keep_latest_k pruning, async saving
// from a host snapshot, and finding the checkpoint to resume from.
#pragma once
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <thread>

#include "titan/checkpoint/checkpoint.h"

namespace titan::checkpoint {

struct ManagerOptions {
  std::string folder;        // dump_folder/<checkpoint.folder>
  int64_t interval = 500;    // steps between saves
  int64_t keep_latest_k = 0; // 0 keeps all
  bool async = false;
  int64_t load_step = -1;    // -1: the latest complete checkpoint
  // Saving ranks: each writes its shards as rank file `rank` of `world`; rank 0 commits once
  // all have written (waiting up to commit_timeout_seconds).
  int rank = 0, world = 1;
  // False on tensor-parallel ranks but the first: the tensors every TP rank holds whole go into
  // the first one's file only.
  bool save_unsliced = true;
  double commit_timeout_seconds = 100;
  bool clean_up = true;  // remove left-over incomplete saves at start (one rank of a run does)
};

class CheckpointManager {
 public:
  CheckpointManager(ManagerOptions options, std::ostream& log);
  ~CheckpointManager();  // waits for an async save in flight
  CheckpointManager(const CheckpointManager&) = delete;
  CheckpointManager& operator=(const CheckpointManager&) = delete;

  // The step folder to resume from: load_step's (UserError if missing) or the latest complete
  // one; none for a fresh run.
  std::optional<std::string> resume_dir() const;
  bool due(int64_t step) const { return step % opt_.interval == 0; }
  // Saves step `step`. Async: copies the state to host buffers, then writes in the background
  // (a second save first waits for the first). Returns the seconds the caller was stalled.
  double save(int64_t step, const std::deque<Parameter>& params, const TrainState& state, bool optimizer = true);
  // Async only: allocates the host snapshot buffers now (at start-up) rather than at the first
  // save, where first-touching gigabytes would stall the loop.
  void prepare(const std::deque<Parameter>& params);
  // Waits for a background save; rethrows its failure.
  void wait();

 private:
  void write(int64_t step, const std::deque<Parameter>& params, const TrainState& state, bool optimizer);
  void prune();

  ManagerOptions opt_;
  std::ostream& log_;
  std::thread worker_;
  std::exception_ptr error_;
  std::unique_ptr<std::deque<Parameter>> snapshot_;
};

}  // namespace titan::checkpoint
