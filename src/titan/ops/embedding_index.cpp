#include "titan/ops/embedding_index.h"

#include <algorithm>

#include "titan/core/error.h"

namespace titan {

void build_embedding_index(const int32_t* tokens, int64_t n, int64_t vocab, bool pad_to_n, EmbeddingIndex& out,
                           std::vector<int32_t>& counts) {
  counts.assign(static_cast<size_t>(vocab) + 1, 0);
  for (int64_t i = 0; i < n; ++i) {
    TITAN_CHECK(tokens[i] >= 0 && tokens[i] < vocab, "token id ", tokens[i], " at position ", i,
                " is outside the vocabulary [0, ", vocab, ")");
    ++counts[tokens[i] + 1];
  }
  out.ids.clear();
  out.offsets.clear();
  for (int64_t t = 0; t < vocab; ++t) {
    if (counts[t + 1] > 0) {
      out.ids.push_back(static_cast<int32_t>(t));
      out.offsets.push_back(counts[t]);
    }
    counts[t + 1] += counts[t];  // counts[t] becomes the first slot of token t
  }
  out.offsets.push_back(static_cast<int32_t>(n));
  out.distinct = static_cast<int64_t>(out.ids.size());
  out.positions.resize(n);
  for (int64_t i = 0; i < n; ++i) out.positions[counts[tokens[i]]++] = static_cast<int32_t>(i);
  if (pad_to_n) {
    out.ids.resize(std::max<int64_t>(n, out.distinct), 0);
    out.offsets.resize(out.ids.size() + 1, static_cast<int32_t>(n));
  }
}

}  // namespace titan
