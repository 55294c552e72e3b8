// Token positions grouped by token id, for an embedding backward that sums each token's rows
// in position order without atomics (the CUDA backend's; ops/cuda/cuda_ops.h).
#pragma once
#include <cstdint>
#include <vector>

namespace titan {

struct EmbeddingIndex {
  std::vector<int32_t> ids;        // distinct token ids, ascending, then padding zeros
  std::vector<int32_t> offsets;    // group u is positions[offsets[u] .. offsets[u + 1])
  std::vector<int32_t> positions;  // 0 .. n-1 grouped by token, ascending within a group
  int64_t distinct = 0;
};

// Counting sort over the vocabulary: O(n + vocab). With pad_to_n the index has n groups (the
// ones past `distinct` empty), so a kernel over it has a fixed launch size.
void build_embedding_index(const int32_t* tokens, int64_t n, int64_t vocab, bool pad_to_n, EmbeddingIndex& out,
                           std::vector<int32_t>& counts_scratch);

}  // namespace titan
