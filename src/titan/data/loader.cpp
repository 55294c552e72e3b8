#include "titan/data/loader.h"

#include "titan/core/error.h"

namespace titan::data {

DataLoader::DataLoader(std::unique_ptr<WindowSource> source, int64_t seq_len, int64_t global_rows,
                       int64_t row_begin, int64_t rows, int prefetch)
    : source_(std::move(source)), seq_(seq_len), global_rows_(global_rows), row_begin_(row_begin), rows_(rows),
      depth_(static_cast<size_t>(std::max(1, prefetch))), state_(source_->state()) {
  TITAN_CHECK(row_begin >= 0 && rows > 0 && row_begin + rows <= global_rows, "rows [", row_begin, ", ",
              row_begin + rows, ") outside a global batch of ", global_rows);
  worker_ = std::thread([this] { run(); });
}

DataLoader::~DataLoader() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  worker_.join();
}

Batch DataLoader::produce() {
  Batch b;
  b.tokens.resize(rows_ * seq_);
  b.labels.resize(rows_ * seq_);
  std::vector<int32_t> window(seq_ + 1);
  for (int64_t r = 0; r < global_rows_; ++r) {
    source_->next(window.data());  // every rank walks the whole global batch
    if (r < row_begin_ || r >= row_begin_ + rows_) continue;
    const int64_t row = r - row_begin_;
    std::copy_n(window.begin(), seq_, b.tokens.begin() + row * seq_);
    std::copy_n(window.begin() + 1, seq_, b.labels.begin() + row * seq_);
  }
  b.state_after = source_->state();
  return b;
}

void DataLoader::run() {
  try {
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stop_ || ready_.size() < depth_; });
        if (stop_) return;
      }
      Batch b = produce();
      {
        std::lock_guard<std::mutex> lock(mu_);
        ready_.push_back(std::move(b));
      }
      cv_.notify_all();
    }
  } catch (...) {
    std::lock_guard<std::mutex> lock(mu_);
    error_ = std::current_exception();
    cv_.notify_all();
  }
}

Batch DataLoader::next() {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return !ready_.empty() || error_; });
  if (ready_.empty()) std::rethrow_exception(error_);
  Batch b = std::move(ready_.front());
  ready_.pop_front();
  state_ = b.state_after;
  lock.unlock();
  cv_.notify_all();
  return b;
}

}  // namespace titan::data
