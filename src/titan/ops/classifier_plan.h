// How many rows the GPU classifier takes at once, shared by the CUDA backends and the memory
// estimate: per group of `rows` rows one GEMM writes bf16 logits, cross-entropy turns them into
// their gradient in place, and the two backward GEMMs (dX, and dW += dlogits^T h) run once.
// Large groups matter: each dW GEMM reads and writes the whole fp32 [vocab, dim] gradient (2.1
// GB for the 1B flavor); one GEMM per 1,046-row group cost about 4 ms of the 1B step's 149 on an
// H200 (2026-11-26).
#pragma once
#include <algorithm>
#include <cstdint>

namespace titan {

struct ClassifierBudget {
  int64_t logits_bytes = int64_t{2} << 30;  // bf16 logits (then their gradient) alive at once
};

// Rows per group: as many as the budget holds, at least one, at most `rows`.
inline int64_t classifier_rows(int64_t rows, int64_t vocab, ClassifierBudget b = {}) {
  return std::clamp<int64_t>(b.logits_bytes / (vocab * 2), 1, std::max<int64_t>(rows, 1));
}

}  // namespace titan
