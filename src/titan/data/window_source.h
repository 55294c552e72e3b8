// One global stream of packed windows (seq_len + 1 tokens each), the same for any number of
// ranks: text tokenized on the fly (torchtitan's packing), pre-tokenized shards, or synthetic.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "titan/data/synthetic.h"
#include "titan/data/text_source.h"
#include "titan/data/tokenizer.h"

namespace titan::data {

// Where the stream stands: enough to produce exactly the windows an uninterrupted stream would.
struct StreamState {
  int64_t windows = 0;  // windows produced so far
  int64_t epoch = 0;    // completed passes over the data
  int64_t file_index = 0, records = 0;  // text reader position within the epoch
  std::vector<int32_t> carry;           // packed tokens not yet in a window
  std::string to_json() const;
  // Throws UserError naming `where` on malformed input.
  static StreamState from_json(const std::string& text, const std::string& where);
  bool operator==(const StreamState&) const = default;
};

class WindowSource {
 public:
  virtual ~WindowSource() = default;
  // Writes the next window of `window` tokens.
  virtual void next(int32_t* out) = 0;
  virtual StreamState state() const = 0;
  virtual void restore(const StreamState& s) = 0;
};

using Logger = std::function<void(const std::string&)>;

// Documents -> BOS + tokens + EOS, concatenated, cut into windows; loops forever, logging
// each new epoch.
std::unique_ptr<WindowSource> make_text_source(std::vector<std::string> files, SourceOptions options,
                                               std::shared_ptr<const Tokenizer> tokenizer, int64_t window,
                                               Logger log);
// Window w is a pure function of (seed, w).
std::unique_ptr<WindowSource> make_synthetic_source(SyntheticKind kind, int64_t vocab, uint64_t seed,
                                                    int64_t window);

}  // namespace titan::data
