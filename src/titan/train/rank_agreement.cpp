#include "titan/train/rank_agreement.h"

#include <xxhash.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <sstream>
#include <vector>

#include "titan/core/error.h"

#ifndef TITAN_BUILD_ID
#define TITAN_BUILD_ID "unknown"
#endif

namespace titan::train {

namespace fs = std::filesystem;

namespace {
// Keys that may differ between ranks without changing the computation. The dataset and the
// tokenizer are compared by content below, not by path.
const std::set<std::string> kPerHost = {
  "job.dump_folder", "job.description", "job.use_for_integration_test",
  "training.threads", "training.dataset", "training.dataset_path", "training.skip_memory_check",
  "model.tokenizer_path", "validation.dataset_path",
  "metrics.enable_color_printing", "metrics.save_tb_folder", "metrics.enable_tensorboard", "metrics.rank_0_only",
  "profiling.save_traces_folder", "profiling.save_memory_snapshot_folder",
  "checkpoint.folder", "checkpoint.initial_load_path", "comm.train_timeout_seconds", "comm.init_timeout_seconds", "comm.trace_buf_size",
};

// Count, bytes and a hash of the files' names and sizes: the same corpus at another path matches.
std::string files_digest(const std::vector<std::string>& files) {
  XXH3_state_t* h = XXH3_createState();
  XXH3_64bits_reset(h);
  uintmax_t total = 0;
  for (const auto& f : files) {
    std::error_code ec;
    const uintmax_t size = fs::file_size(f, ec);
    const std::string entry = concat(fs::path(f).filename().string(), ":", ec ? 0 : size, "\n");
    XXH3_64bits_update(h, entry.data(), entry.size());
    total += ec ? 0 : size;
  }
  const uint64_t digest = XXH3_64bits_digest(h);
  XXH3_freeState(h);
  return concat(files.size(), " files, ", total, " bytes, names and sizes ", std::hex, digest);
}

std::string data_digest(const DataSetup& d, const std::vector<std::string>& files, const std::string& shards) {
  if (d.synthetic && files.empty() && shards.empty()) return "synthetic";
  if (!shards.empty()) return concat("pre-tokenized shards ", fs::path(shards).filename().string());
  return files_digest(files);
}

std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}
}  // namespace

std::string computation_digest(const config::JobConfig& cfg, const DataSetup& data) {
  std::ostringstream out;
  out << "titan build = " << TITAN_BUILD_ID << "\n";
  std::string section;
  for (const auto& line : split_lines(cfg.to_toml())) {
    if (line.rfind('[', 0) == 0) {
      section = line.substr(1, line.size() - 2);
    } else if (const auto eq = line.find(" = "); eq != std::string::npos) {
      const std::string key = section + "." + line.substr(0, eq);
      if (!kPerHost.count(key)) out << key << line.substr(eq) << "\n";
    }
  }
  out << "training.dataset = " << (data.synthetic ? cfg.get_string("training.dataset") + ", " : "")
      << data_digest(data, data.train_files, data.train_shards) << "\n";
  out << "validation data = " << data_digest(data, data.validation_files, data.validation_shards) << "\n";
  out << "model.tokenizer = " << (data.tokenizer ? concat("content ", std::hex, data.tokenizer->fingerprint()) : "none")
      << "\n";
  // The initial weights by their files' names and sizes (and config.json's bytes), not their path.
  if (const std::string init = cfg.get_string("checkpoint.initial_load_path"); !init.empty()) {
    std::vector<std::string> files;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(init, ec))
      if (e.is_regular_file(ec)) files.push_back(e.path().string());
    std::sort(files.begin(), files.end());
    std::ifstream config((fs::path(init) / "config.json").string());
    const std::string config_text((std::istreambuf_iterator<char>(config)), std::istreambuf_iterator<char>());
    out << "checkpoint.initial_load_path = " << files_digest(files) << ", config "
        << XXH3_64bits(config_text.data(), config_text.size()) << "\n";
  }
  return out.str();
}

void require_same_on_all_ranks(parallel::ProcessGroup& group, const std::string& lines, const std::string& what) {
  const int n = group.size();
  if (n == 1) return;
  int64_t size = static_cast<int64_t>(lines.size());
  group.broadcast(&size, sizeof size, 0);
  std::string root(static_cast<size_t>(size), '\0');
  if (group.rank() == 0) root = lines;
  group.broadcast(root.data(), size, 0);
  const auto mine = split_lines(lines), theirs = split_lines(root);
  size_t first = 0;
  while (first < mine.size() && first < theirs.size() && mine[first] == theirs[first]) ++first;
  const bool differs = first < mine.size() || first < theirs.size();
  std::vector<double> differing(static_cast<size_t>(n), 0.0);  // one-hot vectors summed: who differs
  differing[static_cast<size_t>(group.rank())] = differs ? 1.0 : 0.0;
  group.all_reduce_sum(differing.data(), n);
  int reporter = -1;
  for (int r = 0; r < n && reporter < 0; ++r)
    if (differing[static_cast<size_t>(r)] > 0) reporter = r;
  if (reporter < 0) return;
  if (group.rank() == reporter) {
    const std::string here = first < mine.size() ? mine[first] : "(nothing)";
    const std::string there = first < theirs.size() ? theirs[first] : "(nothing)";
    throw UserError(concat("rank ", group.rank(), "'s ", what, " differs from rank 0's: ", here, " here, but ", there,
                           " on rank 0; every rank must be started with the same config, data and checkpoint"));
  }
  group.barrier();  // never completes: the reporting rank aborts the job
}

}  // namespace titan::train
