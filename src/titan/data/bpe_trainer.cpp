#include "titan/data/bpe_trainer.h"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>
#include <queue>

#include "titan/core/error.h"
#include "titan/data/tokenizer.h"

namespace titan::data {

namespace {
using Pair = std::pair<int32_t, int32_t>;
uint64_t key(Pair p) { return (static_cast<uint64_t>(p.first) << 32) | static_cast<uint32_t>(p.second); }
Pair unkey(uint64_t k) { return {static_cast<int32_t>(k >> 32), static_cast<int32_t>(k & 0xffffffffu)}; }
}  // namespace

void BpeTrainer::add_text(std::string_view text) {
  pre_.split(text, [&](std::string_view piece) { ++counts_[std::string(piece)]; });
}

std::vector<std::string> BpeTrainer::train(int64_t num_ranks) const {
  TITAN_CHECK(num_ranks >= 256, "a byte-level vocabulary needs at least 256 ranks");
  std::vector<std::string> tokens(256);
  std::unordered_map<std::string, int32_t> ids;
  for (int b = 0; b < 256; ++b) {
    tokens[b] = std::string(1, static_cast<char>(b));
    ids[tokens[b]] = b;
  }
  // Words in a fixed order (sorted bytes), so ties and updates never depend on hashing.
  std::vector<std::pair<std::string, int64_t>> sorted(counts_.begin(), counts_.end());
  std::sort(sorted.begin(), sorted.end());
  std::vector<std::vector<int32_t>> words(sorted.size());
  std::vector<int64_t> freq(sorted.size());
  std::unordered_map<uint64_t, int64_t> pair_count;
  std::unordered_map<uint64_t, std::vector<int32_t>> where;  // pair -> words that (may) hold it
  for (size_t w = 0; w < sorted.size(); ++w) {
    freq[w] = sorted[w].second;
    for (unsigned char c : sorted[w].first) words[w].push_back(c);
    for (size_t i = 0; i + 1 < words[w].size(); ++i) {
      const uint64_t k = key({words[w][i], words[w][i + 1]});
      pair_count[k] += freq[w];
      where[k].push_back(static_cast<int32_t>(w));
    }
  }
  // Max-heap on (count, smaller pair first); entries go stale and are checked when popped.
  struct Entry {
    int64_t count;
    uint64_t pair;
    bool operator<(const Entry& o) const { return count != o.count ? count < o.count : pair > o.pair; }
  };
  std::priority_queue<Entry> heap;
  for (const auto& [k, c] : pair_count) heap.push({c, k});

  while (static_cast<int64_t>(tokens.size()) < num_ranks && !heap.empty()) {
    const Entry top = heap.top();
    heap.pop();
    auto it = pair_count.find(top.pair);
    if (it == pair_count.end() || it->second != top.count) continue;  // stale
    if (top.count <= 0) break;
    const Pair p = unkey(top.pair);
    const std::string merged = tokens[p.first] + tokens[p.second];
    int32_t new_id;
    if (auto found = ids.find(merged); found != ids.end()) {
      new_id = found->second;  // the same bytes reached another way: no new rank
    } else {
      new_id = static_cast<int32_t>(tokens.size());
      tokens.push_back(merged);
      ids[merged] = new_id;
    }
    std::map<uint64_t, int64_t> delta;  // ordered, so heap pushes are deterministic
    std::vector<int32_t> touched = std::move(where[top.pair]);
    std::sort(touched.begin(), touched.end());
    touched.erase(std::unique(touched.begin(), touched.end()), touched.end());
    for (int32_t w : touched) {
      auto& word = words[w];
      bool has = false;
      for (size_t i = 0; i + 1 < word.size(); ++i) has |= word[i] == p.first && word[i + 1] == p.second;
      if (!has) continue;
      for (size_t i = 0; i + 1 < word.size(); ++i) delta[key({word[i], word[i + 1]})] -= freq[w];
      std::vector<int32_t> out;
      out.reserve(word.size());
      for (size_t i = 0; i < word.size(); ++i) {
        if (i + 1 < word.size() && word[i] == p.first && word[i + 1] == p.second) {
          out.push_back(new_id);
          ++i;
        } else {
          out.push_back(word[i]);
        }
      }
      word = std::move(out);
      for (size_t i = 0; i + 1 < word.size(); ++i) {
        const uint64_t k = key({word[i], word[i + 1]});
        delta[k] += freq[w];
        where[k].push_back(w);
      }
    }
    for (const auto& [k, d] : delta) {
      if (d == 0) continue;
      int64_t& c = pair_count[k];
      c += d;
      if (c > 0) heap.push({c, k});
    }
    pair_count.erase(top.pair);
  }
  return tokens;
}

void write_tiktoken(const std::vector<std::string>& ranks, const std::string& path) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary);
    if (!out) throw UserError(concat(path, ": cannot write"));
    for (size_t i = 0; i < ranks.size(); ++i) out << base64_encode(ranks[i]) << ' ' << i << '\n';
    if (!out) throw UserError(concat(path, ": write failed"));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) throw UserError(concat(path, ": cannot rename ", tmp, " into place"));
}

}  // namespace titan::data
