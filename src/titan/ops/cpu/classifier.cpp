#include <algorithm>
#include <cmath>
#include <vector>

#include <cblas.h>

#include "titan/core/error.h"
#include "titan/ops/ops.h"

namespace titan::cpu {

ClassifierResult classifier_forward_backward(const float* h, const float* w, const int32_t* labels,
                                             int64_t n, int64_t d, int64_t vocab,
                                             int32_t ignore_index, float grad_scale, float* dh,
                                             float* dw) {
  // Rows per chunk: about 16 MiB of fp32 logits, at least 16 rows.
  const int64_t chunk = std::max<int64_t>(16, (int64_t{4} << 20) / std::max<int64_t>(vocab, 1));
  std::vector<float> logits(std::min(chunk, n) * vocab);
  std::vector<double> row_loss(std::min(chunk, n));
  for (int64_t i = 0; i < n; ++i)
    TITAN_CHECK(labels[i] == ignore_index || (labels[i] >= 0 && labels[i] < vocab), "label ",
                labels[i], " at position ", i, " is outside the vocabulary [0, ", vocab, ")");
  ClassifierResult result;
  for (int64_t r0 = 0; r0 < n; r0 += chunk) {
    int64_t rows = std::min(chunk, n - r0);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, vocab, d, 1.0f, h + r0 * d, d, w, d,
                0.0f, logits.data(), vocab);
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      float* z = logits.data() + r * vocab;
      int32_t label = labels[r0 + r];
      if (label == ignore_index) {
        row_loss[r] = 0;
        if (dh) std::fill(z, z + vocab, 0.0f);
        continue;
      }
      float mx = z[0];
      for (int64_t j = 1; j < vocab; ++j) mx = std::max(mx, z[j]);
      double sum = 0;
      for (int64_t j = 0; j < vocab; ++j) sum += std::exp(static_cast<double>(z[j] - mx));
      double lse = mx + std::log(sum);
      row_loss[r] = lse - z[label];
      if (dh) {  // logits become dlogits = (softmax - onehot) * grad_scale
        for (int64_t j = 0; j < vocab; ++j) z[j] = static_cast<float>(std::exp(z[j] - lse)) * grad_scale;
        z[label] -= grad_scale;
      }
    }
    for (int64_t r = 0; r < rows; ++r) {
      if (labels[r0 + r] == ignore_index) continue;
      result.loss_sum += row_loss[r];
      result.count += 1;
    }
    if (dh) {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, d, vocab, 1.0f, logits.data(),
                  vocab, w, d, 0.0f, dh + r0 * d, d);
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, vocab, d, rows, 1.0f, logits.data(),
                  vocab, h + r0 * d, d, 1.0f, dw, d);
    }
  }
  return result;
}

}  // namespace titan::cpu
