// Sharded checkpoints: dump_folder/<checkpoint.folder>/step-N/ holds one data file per rank
// (raw little-endian shards of every tensor) and metadata.json (every tensor's name, global
// shape, dtype, which rank file holds which dim-0 rows at which offset, an XXH3 checksum; the
// training state). Written under step-N.tmp, fsync'd, renamed when complete: a crash at any
// moment leaves the previous checkpoint loadable. Any saved rank count loads at any other.
#pragma once
#include <cstdint>
#include <deque>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "titan/core/error.h"
#include "titan/core/parameter.h"

namespace titan::checkpoint {

// One block of a tensor inside a rank file: rows of dim 0 (FSDP's shard, offset by tensor
// parallel's slice) and, for a row-wise tensor-parallel slice, some columns of dim 1.
struct ShardEntry {
  std::string tensor;  // "model/<name>", "optim/exp_avg/<name>", "optim/exp_avg_sq/<name>"
  Shape global_shape;
  int rank = 0;
  int64_t row_begin = 0, row_end = 0;
  int64_t offset = 0, bytes = 0;  // within rank-RRRRR.bin
  uint64_t checksum = 0;          // XXH3-64 of those bytes
  // Columns of dim 1 (a tensor-parallel row-wise slice holds some of them); col_end -1: all.
  int64_t col_begin = 0, col_end = -1;
  int64_t columns_end() const { return col_end >= 0 ? col_end : global_shape.size() > 1 ? global_shape[1] : 1; }
  bool partial_columns() const { return global_shape.size() > 1 && (col_begin != 0 || columns_end() != global_shape[1]); }
};

// Everything besides tensors that an exact resume needs.
struct TrainState {
  int64_t step = 0;             // optimizer steps completed
  std::string data_state;       // the data loader's StreamState as JSON
  std::string model_signature;  // model shape + tokenizer + dtype, JSON; must match to load
  std::string config_toml;      // the run's resolved config, to report what changed
  int64_t global_batch = 0;     // sequences per step over all ranks (0: not recorded), to report a change
};

struct Metadata {
  int world = 1;
  TrainState state;
  bool has_optimizer = true;
  std::vector<ShardEntry> shards;
};

// A saved step moved aside while its replacement is renamed in (filesystems without an atomic
// exchange): restored at start-up if the replacement never arrived.
inline constexpr const char* kReplacedSuffix = ".replaced";

std::string rank_file_name(int rank);
// Opens a rank file for reading; UserError naming it as missing, or why it cannot be read.
std::ifstream open_rank_file(const std::string& path);
std::string step_dir_name(int64_t step);
// N for a folder named step-N (digits only), nothing for any other name (step-3.tmp included).
std::optional<int64_t> step_of_dir_name(const std::string& name);

// A state that cannot be saved: an inf or NaN in a weight or an optimizer moment.
class NonFiniteState : public UserError {
 public:
  using UserError::UserError;
};

// Writes this rank's file into `dir` (a step-N.tmp folder) and returns its entries. With
// optimizer = false only the model weights are written. NonFiniteState, naming the tensor, for
// any inf or NaN.
// `unsliced` false: the tensors this rank holds whole (tensor parallel's replicated norms on
// every TP rank but the first) are left to another rank's file.
std::vector<ShardEntry> write_rank_file(const std::string& dir, int rank, const std::deque<Parameter>& params,
                                        bool optimizer, bool unsliced = true);
// The same in two halves: the entries (checksums included; NonFiniteState as above) without
// writing, then the bytes they describe (the same parameters, unchanged in between).
std::vector<ShardEntry> plan_rank_file(const std::string& dir, int rank, const std::deque<Parameter>& params,
                                       bool optimizer, bool unsliced = true);
void write_rank_data(const std::string& dir, int rank, const std::deque<Parameter>& params, bool optimizer,
                     bool unsliced = true);
// Entries as metadata.json lists them, and back (UserError naming `where` when malformed): how
// the saving ranks exchange them through the process group.
std::string entries_text(const std::vector<ShardEntry>& entries);
// The training state as one line of JSON, and back.
std::string state_text(const TrainState& state);
TrainState state_from_text(const std::string& text, const std::string& where);
std::vector<ShardEntry> entries_from_text(const std::string& text, const std::string& where);
// Several saving ranks, each host with its own folder or all sharing one: a rank marks the
// folder it writes into (mark_writer) before any rank writes, so each learns which ranks share
// its folder (folder_writers; the lowest commits it), and says its file is whole (mark_written)
// once fsync'd; the committing rank waits for those of its folder (wait_for_writers, up to
// timeout_seconds) and removes the marks.
void mark_writer(const std::string& dir, int rank);
std::vector<int> folder_writers(const std::string& dir);
void mark_written(const std::string& dir, int rank);
void wait_for_writers(const std::string& dir, const std::vector<int>& ranks, int world, double timeout_seconds);
// Writes metadata.json (with a checksum of its own text) into `dir`, fsyncs the folder and
// renames it to `final_dir`. An existing `final_dir` is an error unless `replace_existing`; then
// the two are swapped atomically and the old one deleted.
void commit(const std::string& dir, const std::string& final_dir, const Metadata& meta, bool replace_existing = false);

// Reads metadata.json; UserError naming the file when it is missing or malformed.
Metadata read_metadata(const std::string& step_dir);
// Fills each parameter's shard (master, and moments when the checkpoint has them and
// `optimizer` is set) from the checkpoint, whatever rank layout saved it. Verifies checksums;
// errors name the tensor or file.
void load_parameters(const std::string& step_dir, const Metadata& meta, std::deque<Parameter>& params, bool optimizer);

// Complete checkpoints (step-N folders with metadata.json) in `folder`, ascending; none when the
// folder does not exist. UserError for a folder that cannot be listed and for a step folder
// named otherwise than titan names them (step-03).
std::vector<int64_t> list_steps(const std::string& folder);

}  // namespace titan::checkpoint
