// Byte-level BPE training (the classic algorithm, as HF tokenizers' BpeTrainer): count the
// pre-tokenized words, then repeatedly merge the most frequent adjacent pair (ties: the pair
// of smaller ids). Deterministic: the same corpus gives the same ranks on any machine.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "titan/data/pretokenizer.h"

namespace titan::data {

class BpeTrainer {
 public:
  explicit BpeTrainer(const PreTokenizer& pre) : pre_(pre) {}
  // Adds a document's words to the counts.
  void add_text(std::string_view text);
  // Ranks (token bytes in rank order): the 256 single bytes, then merges, `num_ranks` in all
  // (fewer when the corpus runs out of pairs).
  std::vector<std::string> train(int64_t num_ranks) const;
  int64_t distinct_words() const { return static_cast<int64_t>(counts_.size()); }

 private:
  const PreTokenizer& pre_;
  std::unordered_map<std::string, int64_t> counts_;
};

// Writes ranks in the tiktoken format (`base64(bytes) rank` lines); throws UserError on I/O failure.
void write_tiktoken(const std::vector<std::string>& ranks, const std::string& path);

}  // namespace titan::data
