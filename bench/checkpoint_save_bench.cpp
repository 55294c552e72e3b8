// Save throughput of a synthetic training state (weights + AdamW moments), timed including
// fsync, sync and async. Usage: checkpoint_save_bench DIR [GiB of training state, default 4] [sync]
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <iostream>
#include <sstream>
#include <string>

#include "titan/checkpoint/manager.h"
#include "titan/core/timer.h"

using namespace titan;

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: checkpoint_save_bench DIR [GiB]\n";
    return 2;
  }
  const double gib = argc > 2 ? std::atof(argv[2]) : 4.0;
  const int64_t cols = 8192, per_param_rows = 1024;  // 32 MiB weights per parameter
  const int64_t params = static_cast<int64_t>(gib * (1LL << 30) / (3.0 * 4 * cols * per_param_rows) + 0.5);
  std::deque<Parameter> state;
  for (int64_t i = 0; i < params; ++i) {
    std::string name = "p";
    name += std::to_string(i);  // (not "p" + ...: GCC 12 -O3 warns falsely there)
    state.push_back(make_parameter(name, {per_param_rows, cols}));
    for (const Tensor* t : {&state.back().master, &state.back().exp_avg, &state.back().exp_avg_sq}) {
      float* d = t->f32();
      for (int64_t j = 0; j < t->numel(); ++j) d[j] = static_cast<float>((j * 2654435761u) % 1000) * 1e-3f;
    }
  }
  const double bytes = static_cast<double>(params) * 3 * 4 * cols * per_param_rows;
  std::filesystem::remove_all(argv[1]);
  std::ostringstream quiet;
  checkpoint::ManagerOptions opt;
  opt.folder = argv[1];
  opt.keep_latest_k = 1;
  checkpoint::CheckpointManager sync(opt, quiet);
  checkpoint::TrainState st{1, "", "{}", ""};
  Timer t;
  sync.save(1, state, st);
  const double sync_s = t.seconds();
  if (argc > 3 && std::string(argv[3]) == "sync") {
    std::printf("{\"gib\": %.3f, \"sync_s\": %.3f, \"sync_gib_s\": %.3f}\n", bytes / (1 << 30), sync_s,
                bytes / (1 << 30) / sync_s);
    std::filesystem::remove_all(argv[1]);
    return 0;
  }
  opt.async = true;
  checkpoint::CheckpointManager async(opt, quiet);
  // The snapshot buffers are allocated once, at start-up in a training run.
  t.reset();
  async.prepare(state);
  const double first_stall = t.seconds();  // reported as the start-up cost
  async.save(2, state, st);
  async.wait();
  t.reset();
  const double stall = async.save(3, state, st);
  async.wait();
  const double async_total = t.seconds();
  std::printf("{\"gib\": %.3f, \"sync_s\": %.3f, \"sync_gib_s\": %.3f, \"async_startup_alloc_s\": %.3f, "
              "\"async_stall_s\": %.3f, \"async_total_s\": %.3f}\n",
              bytes / (1 << 30), sync_s, bytes / (1 << 30) / sync_s, first_stall, stall, async_total);
  std::filesystem::remove_all(argv[1]);
  return 0;
}
