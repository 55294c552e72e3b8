// Byte-level byte-pair encoding of one pre-tokenized piece, in the two flavours titan reads:
// tiktoken's (merge the adjacent pair whose concatenation has the lowest rank) and HF
// tokenizers' (merge the adjacent pair listed first in `merges`).
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace titan::data {

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

class BytePairEncoder {
 public:
  BytePairEncoder() = default;
  // tiktoken: tokens[id] are the bytes of rank id. Throws UserError naming `where` when a byte
  // has no token or a token appears twice.
  static BytePairEncoder from_ranks(std::vector<std::string> tokens, const std::string& where);
  // HF: merges are (left id, right id) in priority order; with whole_words a piece that is
  // itself a token is emitted as one (tokenizers' ignore_merges).
  static BytePairEncoder from_merges(std::vector<std::string> tokens,
                                     const std::vector<std::pair<int32_t, int32_t>>& merges,
                                     bool whole_words, const std::string& where);

  void encode_piece(std::string_view piece, std::vector<int32_t>& out) const;
  int64_t size() const { return static_cast<int64_t>(tokens_.size()); }
  const std::string& bytes(int32_t id) const { return tokens_[id]; }
  // The id of exactly these bytes, or -1.
  int32_t find(std::string_view bytes) const;

 private:
  static constexpr int32_t kNone = INT32_MAX;
  void index(const std::string& where);
  // Priority of merging parts [a, b) and [b, c) of piece (lower first), kNone if not mergeable;
  // `merged` receives the resulting id.
  int32_t pair_rank(std::string_view piece, size_t a, size_t b, size_t c, int32_t left, int32_t right,
                    int32_t& merged) const;
  void merge_short(std::string_view piece, std::vector<int32_t>& out) const;
  void merge_long(std::string_view piece, std::vector<int32_t>& out) const;

  std::vector<std::string> tokens_;
  std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>> ids_;
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges_;  // (left, right) -> (priority, id)
  int32_t byte_ids_[256] = {};
  bool rank_merges_ = true;  // tiktoken semantics
  bool whole_words_ = true;
};

}  // namespace titan::data
