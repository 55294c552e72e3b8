#include "titan/data/window_source.h"

#include <algorithm>

#include <nlohmann/json.hpp>

#include "titan/core/error.h"

namespace titan::data {

std::string StreamState::to_json() const {
  return nlohmann::json{{"windows", windows}, {"epoch", epoch}, {"file_index", file_index},
                        {"records", records}, {"carry", carry}}
      .dump();
}

StreamState StreamState::from_json(const std::string& text, const std::string& where) {
  try {
    auto j = nlohmann::json::parse(text);
    StreamState s;
    s.windows = j.at("windows").get<int64_t>();
    s.epoch = j.at("epoch").get<int64_t>();
    s.file_index = j.at("file_index").get<int64_t>();
    s.records = j.at("records").get<int64_t>();
    s.carry = j.at("carry").get<std::vector<int32_t>>();
    if (s.windows < 0 || s.epoch < 0 || s.file_index < 0 || s.records < 0)
      throw UserError(concat(where, ": negative position in data loader state"));
    return s;
  } catch (const nlohmann::json::exception& e) {
    throw UserError(concat(where, ": malformed data loader state: ", e.what()));
  }
}

namespace {

class TextWindowSource : public WindowSource {
 public:
  TextWindowSource(std::vector<std::string> files, SourceOptions options,
                   std::shared_ptr<const Tokenizer> tokenizer, int64_t window, Logger log)
      : files_(std::move(files)), options_(std::move(options)), tok_(std::move(tokenizer)),
        window_(window), log_(std::move(log)) {
    if (tok_->bos_id() < 0 || tok_->eos_id() < 0)
      throw UserError("the tokenizer has no <|begin_of_text|>/<|end_of_text|> tokens, needed to pack documents");
    reader_ = std::make_unique<DocumentReader>(files_, options_);
  }

  void next(int32_t* out) override {
    while (static_cast<int64_t>(buffer_.size() - head_) < window_) read_document();
    std::copy_n(buffer_.begin() + static_cast<std::ptrdiff_t>(head_), window_, out);
    head_ += window_;
    ++state_.windows;
    if (head_ > (1u << 20)) {  // drop what was consumed, now and then
      buffer_.erase(buffer_.begin(), buffer_.begin() + static_cast<std::ptrdiff_t>(head_));
      head_ = 0;
    }
  }

  StreamState state() const override {
    StreamState s = state_;
    s.file_index = reader_->file_index() < 0 ? 0 : reader_->file_index();
    s.records = reader_->file_index() < 0 ? 0 : reader_->records_in_file();
    s.carry.assign(buffer_.begin() + static_cast<std::ptrdiff_t>(head_), buffer_.end());
    return s;
  }

  void restore(const StreamState& s) override {
    if (s.file_index > static_cast<int64_t>(files_.size()))
      throw UserError(concat("data loader state points at file ", s.file_index, " but the dataset has ", files_.size()));
    state_ = s;
    reader_ = std::make_unique<DocumentReader>(files_, options_);
    reader_->skip_to(s.file_index, s.records);
    buffer_ = s.carry;
    head_ = 0;
    docs_this_epoch_ = 0;
    whole_pass_ = s.file_index == 0 && s.records == 0;
  }

 private:
  void read_document() {
    Document doc;
    if (!reader_->next(doc)) {
      if (whole_pass_ && docs_this_epoch_ == 0)
        throw UserError(concat("dataset ", files_.front(), (files_.size() > 1 ? " ..." : ""), ": no documents (",
                               reader_->skipped_records(), " bad records skipped)"));
      whole_pass_ = true;
      ++state_.epoch;
      docs_this_epoch_ = 0;
      if (log_) log_(concat("data: epoch ", state_.epoch, " complete, starting again from the first file"));
      reader_ = std::make_unique<DocumentReader>(files_, options_);
      return;
    }
    ++docs_this_epoch_;
    buffer_.push_back(tok_->bos_id());
    tok_->encode_ordinary(doc.text, buffer_);
    buffer_.push_back(tok_->eos_id());
  }

  std::vector<std::string> files_;
  SourceOptions options_;
  std::shared_ptr<const Tokenizer> tok_;
  int64_t window_;
  Logger log_;
  std::unique_ptr<DocumentReader> reader_;
  StreamState state_;
  std::vector<int32_t> buffer_;
  size_t head_ = 0;
  int64_t docs_this_epoch_ = 0;
  bool whole_pass_ = true;  // this epoch's reader started at the first file
};

class SyntheticWindowSource : public WindowSource {
 public:
  SyntheticWindowSource(SyntheticKind kind, int64_t vocab, uint64_t seed, int64_t window)
      : stream_(kind, vocab, seed), window_(window) {}
  void next(int32_t* out) override {
    for (int64_t t = 0; t < window_; ++t) out[t] = stream_.token(state_.windows, t);
    ++state_.windows;
  }
  StreamState state() const override { return state_; }
  void restore(const StreamState& s) override { state_ = s; }

 private:
  SyntheticStream stream_;
  int64_t window_;
  StreamState state_;
};

}  // namespace

std::unique_ptr<WindowSource> make_text_source(std::vector<std::string> files, SourceOptions options,
                                               std::shared_ptr<const Tokenizer> tokenizer, int64_t window,
                                               Logger log) {
  return std::make_unique<TextWindowSource>(std::move(files), std::move(options), std::move(tokenizer), window,
                                            std::move(log));
}

std::unique_ptr<WindowSource> make_synthetic_source(SyntheticKind kind, int64_t vocab, uint64_t seed,
                                                    int64_t window) {
  return std::make_unique<SyntheticWindowSource>(kind, vocab, seed, window);
}

}  // namespace titan::data
