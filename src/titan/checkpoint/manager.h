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
#include <vector>

#include "titan/checkpoint/checkpoint.h"

namespace titan::checkpoint {

// How the ranks of a run agree on a save, through the run's process group rather than files:
// hosts may each have their own checkpoint folder (SageMaker's /opt/ml/checkpoints, synced per
// instance to one S3 prefix). Every rank of the run takes part, savers or not.
class SaveCollectives {
 public:
  virtual ~SaveCollectives() = default;
  // Every rank's text, in rank order.
  virtual std::vector<std::string> all_gather(const std::string& mine) = 0;
  virtual void barrier() = 0;
};

struct ManagerOptions {
  std::string folder;        // dump_folder/<checkpoint.folder>
  int64_t interval = 500;    // steps between saves
  int64_t keep_latest_k = 0; // 0 keeps all
  bool async = false;
  int64_t load_step = -1;    // -1: the latest complete checkpoint
  // Saving ranks: each writes its shards as rank file `rank` of `world`; in each folder the
  // lowest writing rank commits once that folder's writers are done (waiting up to
  // commit_timeout_seconds). `collectives` (more than one rank) carry every rank's entries, so
  // each folder's metadata.json lists all of them; `saver` false: a rank that only takes part
  // (a replica).
  int rank = 0, world = 1;
  bool saver = true;
  SaveCollectives* collectives = nullptr;
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
  // The metadata of step `step` with every rank's entries (collectives), and this rank's folder's
  // writers; this rank's are planned from `params`, which write_and_commit then writes.
  struct Plan {
    Metadata meta;
    std::vector<int> folder_writers;
  };
  Plan plan(int64_t step, const std::deque<Parameter>& params, const TrainState& state, bool optimizer);
  void write_and_commit(int64_t step, const std::deque<Parameter>& params, const Plan& plan, bool optimizer);
  void prune();

  ManagerOptions opt_;
  std::ostream& log_;
  std::thread worker_;
  std::exception_ptr error_;
  std::unique_ptr<std::deque<Parameter>> snapshot_;
};

}  // namespace titan::checkpoint
