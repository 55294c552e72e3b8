// Batches for one data-parallel rank: each global batch is the next `global_rows` windows of
// the global stream; this rank keeps rows [row_begin, row_begin + rows). A background thread
// keeps the next batches ready.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "titan/data/window_source.h"

namespace titan::data {

struct Batch {
  std::vector<int32_t> tokens, labels;  // [rows, seq] each
  StreamState state_after;              // the stream's state once this batch is taken
};

class DataLoader {
 public:
  DataLoader(std::unique_ptr<WindowSource> source, int64_t seq_len, int64_t global_rows, int64_t row_begin,
             int64_t rows, int prefetch = 2);
  ~DataLoader();
  DataLoader(const DataLoader&) = delete;
  DataLoader& operator=(const DataLoader&) = delete;

  // The next batch; rethrows a failure of the background thread (bad data, say).
  Batch next();
  // State after the last batch handed out (what a checkpoint stores).
  StreamState state() const { return state_; }

 private:
  Batch produce();
  void run();

  std::unique_ptr<WindowSource> source_;
  int64_t seq_, global_rows_, row_begin_, rows_;
  size_t depth_;
  StreamState state_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Batch> ready_;
  std::exception_ptr error_;
  bool stop_ = false;
  std::thread worker_;
};

}  // namespace titan::data
