// Ranks that would train differently refuse to start: under mpirun each rank reads its own
// command line and files (MPMD, a config edited between launches), so nothing else makes them agree.
#pragma once
#include <string>

#include "titan/config/job_config.h"
#include "titan/parallel/process_group.h"
#include "titan/train/datasets.h"

namespace titan::train {

// "key = value" lines of every resolved key that changes what is computed, plus titan's build,
// the tokenizer by content and the data files by name and size. Per-host values (threads, paths,
// logging folders, timeouts) are left out: they may differ between ranks.
std::string computation_digest(const config::JobConfig& cfg, const DataSetup& data);

// Every rank passes its "key = value" lines; the first rank whose lines differ from rank 0's
// throws a UserError naming the first differing key with both values, and the others wait (the
// launcher ends them when that rank aborts). `what` names the lines in the message.
void require_same_on_all_ranks(parallel::ProcessGroup& group, const std::string& lines, const std::string& what);

}  // namespace titan::train
