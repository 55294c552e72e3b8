#include "titan/data/bpe.h"

#include <queue>

#include "titan/core/error.h"

namespace titan::data {

namespace {
uint64_t pair_key(int32_t a, int32_t b) { return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b); }
constexpr size_t kShortPiece = 48;  // longer pieces use the heap merge (no quadratic blow-up)
}  // namespace

void BytePairEncoder::index(const std::string& where) {
  ids_.reserve(tokens_.size());
  for (size_t i = 0; i < tokens_.size(); ++i) {
    if (tokens_[i].empty()) continue;  // an unused id (holes are allowed in tokenizer.json)
    if (!ids_.emplace(tokens_[i], static_cast<int32_t>(i)).second)
      throw UserError(concat(where, ": token id ", i, " repeats the bytes of id ", ids_[tokens_[i]]));
  }
  for (int b = 0; b < 256; ++b) {
    auto it = ids_.find(std::string(1, static_cast<char>(b)));
    if (it == ids_.end()) throw UserError(concat(where, ": no token for the single byte 0x", std::hex, b, " (byte-level BPE needs all 256)"));
    byte_ids_[b] = it->second;
  }
}

BytePairEncoder BytePairEncoder::from_ranks(std::vector<std::string> tokens, const std::string& where) {
  BytePairEncoder e;
  e.tokens_ = std::move(tokens);
  e.index(where);
  return e;
}

BytePairEncoder BytePairEncoder::from_merges(std::vector<std::string> tokens,
                                             const std::vector<std::pair<int32_t, int32_t>>& merges,
                                             bool whole_words, const std::string& where) {
  BytePairEncoder e;
  e.tokens_ = std::move(tokens);
  e.rank_merges_ = false;
  e.whole_words_ = whole_words;
  e.index(where);
  for (size_t i = 0; i < merges.size(); ++i) {
    auto [l, r] = merges[i];
    const int32_t id = e.find(e.tokens_[l] + e.tokens_[r]);
    if (id < 0) throw UserError(concat(where, ": merge ", i, " makes a token that is not in the vocabulary"));
    e.merges_.emplace(pair_key(l, r), std::pair<int32_t, int32_t>{static_cast<int32_t>(i), id});
  }
  return e;
}

int32_t BytePairEncoder::find(std::string_view bytes) const {
  auto it = ids_.find(bytes);
  return it == ids_.end() ? -1 : it->second;
}

int32_t BytePairEncoder::pair_rank(std::string_view piece, size_t a, size_t, size_t c, int32_t left,
                                   int32_t right, int32_t& merged) const {
  if (rank_merges_) {
    merged = find(piece.substr(a, c - a));
    return merged < 0 ? kNone : merged;
  }
  auto it = merges_.find(pair_key(left, right));
  if (it == merges_.end()) return kNone;
  merged = it->second.second;
  return it->second.first;
}

void BytePairEncoder::encode_piece(std::string_view piece, std::vector<int32_t>& out) const {
  if (piece.empty()) return;
  if (whole_words_) {
    if (int32_t id = find(piece); id >= 0) {
      out.push_back(id);
      return;
    }
  }
  if (piece.size() == 1) {
    out.push_back(byte_ids_[static_cast<unsigned char>(piece[0])]);
    return;
  }
  if (piece.size() <= kShortPiece) merge_short(piece, out);
  else merge_long(piece, out);
}

// Scan for the best pair each round: fastest for the short pieces that are nearly all of them.
void BytePairEncoder::merge_short(std::string_view piece, std::vector<int32_t>& out) const {
  struct Part {
    size_t start;
    int32_t id, rank, merged;
  };
  std::vector<Part> parts;
  parts.reserve(piece.size() + 1);
  for (size_t i = 0; i < piece.size(); ++i) parts.push_back({i, byte_ids_[static_cast<unsigned char>(piece[i])], kNone, -1});
  parts.push_back({piece.size(), -1, kNone, -1});
  auto rank_at = [&](size_t i) {  // pair (parts[i], parts[i + 1])
    if (i + 2 >= parts.size()) return;
    parts[i].rank = pair_rank(piece, parts[i].start, parts[i + 1].start, parts[i + 2].start, parts[i].id,
                              parts[i + 1].id, parts[i].merged);
  };
  for (size_t i = 0; i + 2 < parts.size(); ++i) rank_at(i);
  while (parts.size() > 2) {
    size_t best = 0;
    for (size_t i = 1; i + 2 < parts.size(); ++i)
      if (parts[i].rank < parts[best].rank) best = i;
    if (parts[best].rank == kNone) break;
    parts[best].id = parts[best].merged;
    parts.erase(parts.begin() + static_cast<std::ptrdiff_t>(best) + 1);
    parts[best].rank = kNone;
    rank_at(best);
    if (best > 0) rank_at(best - 1);
  }
  for (size_t i = 0; i + 1 < parts.size(); ++i) out.push_back(parts[i].id);
}

// Linked parts and a heap of candidate merges ordered by (rank, position): the same result as
// the scan (lowest rank, leftmost first) in O(n log n).
void BytePairEncoder::merge_long(std::string_view piece, std::vector<int32_t>& out) const {
  const size_t n = piece.size();
  std::vector<size_t> start(n + 1), next(n + 1), prev(n + 1);
  std::vector<int32_t> id(n + 1, -1);
  std::vector<bool> alive(n + 1, true);
  for (size_t i = 0; i <= n; ++i) {
    start[i] = i;
    next[i] = i + 1;
    prev[i] = i == 0 ? SIZE_MAX : i - 1;
    if (i < n) id[i] = byte_ids_[static_cast<unsigned char>(piece[i])];
  }
  struct Cand {
    int32_t rank;
    size_t left;
    int32_t left_id, right_id, merged;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
  };
  std::priority_queue<Cand, std::vector<Cand>, std::greater<>> heap;
  auto push = [&](size_t i) {  // candidate merge of part i with its successor
    if (i == SIZE_MAX || next[i] >= n) return;
    const size_t j = next[i];
    int32_t merged = -1;
    const int32_t r = pair_rank(piece, start[i], start[j], start[next[j]], id[i], id[j], merged);
    if (r != kNone) heap.push({r, i, id[i], id[j], merged});
  };
  for (size_t i = 0; i + 1 < n; ++i) push(i);
  while (!heap.empty()) {
    Cand c = heap.top();
    heap.pop();
    const size_t i = c.left;
    if (!alive[i] || next[i] >= n || id[i] != c.left_id || id[next[i]] != c.right_id) continue;  // stale
    const size_t j = next[i];
    id[i] = c.merged;
    alive[j] = false;
    next[i] = next[j];
    if (next[j] <= n) prev[next[j]] = i;
    push(prev[i]);
    push(i);
  }
  for (size_t i = 0; i < n; i = next[i]) out.push_back(id[i]);
}

}  // namespace titan::data
