// How the GPU classifier walks a batch's rows, shared by CudaTransformer and the memory
// estimate. The fp32 logits live `logit_rows` rows at a time (GEMM, then cross-entropy); their
// bf16 gradients are kept for `grad_rows` rows (a multiple of logit_rows) so the two backward
// GEMMs run once per grad_rows. Why the second level: dW += dlogits^T h reads and writes the
// whole fp32 [vocab, dim] gradient once per GEMM (2.1 GB for the 1B flavor), which at one
// GEMM per 1,046-row logits chunk cost about 4 ms of the 1B step's 149 on an H200.
#pragma once
#include <algorithm>
#include <cstdint>

namespace titan::llama3 {

struct ClassifierBudget {
  int64_t logits_bytes = int64_t{512} << 20;     // fp32 logits alive at once
  int64_t logit_grad_bytes = int64_t{2} << 30;   // bf16 logit gradients alive at once
};

struct ClassifierPlan {
  int64_t logit_rows = 1;  // rows per logits chunk
  int64_t grad_rows = 1;   // rows per backward GEMM pair; the dlogits buffer holds min(grad_rows, rows)
};

inline ClassifierPlan classifier_plan(int64_t rows, int64_t vocab, ClassifierBudget b = {}) {
  ClassifierPlan p;
  p.logit_rows = std::clamp<int64_t>(b.logits_bytes / (vocab * 4), 1, std::max<int64_t>(rows, 1));
  const int64_t chunks = (rows + p.logit_rows - 1) / p.logit_rows;
  p.grad_rows = p.logit_rows * std::clamp<int64_t>(b.logit_grad_bytes / (vocab * 2) / p.logit_rows, 1,
                                                   std::max<int64_t>(chunks, 1));
  return p;
}

}  // namespace titan::llama3
