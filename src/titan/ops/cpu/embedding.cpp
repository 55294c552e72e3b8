#include <algorithm>
#include <cstring>

#include "titan/core/error.h"
#include "titan/ops/ops.h"

namespace titan::cpu {

void embedding_forward(const int32_t* tokens, const float* w, float* out, int64_t n, int64_t vocab,
                       int64_t d) {
  for (int64_t i = 0; i < n; ++i)
    TITAN_CHECK(tokens[i] >= 0 && tokens[i] < vocab, "token id ", tokens[i], " at position ", i,
                " is outside the vocabulary [0, ", vocab, ")");
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) std::memcpy(out + i * d, w + static_cast<int64_t>(tokens[i]) * d, d * sizeof(float));
}

void embedding_backward(const int32_t* tokens, const float* dout, float* dw, int64_t n, int64_t d) {
  // Each thread owns a slice of the columns and walks the tokens in order: no races, and the
  // sum order per element is the token order whatever the thread count.
  constexpr int64_t kCols = 16;
  int64_t slices = (d + kCols - 1) / kCols;
#pragma omp parallel for schedule(static)
  for (int64_t s = 0; s < slices; ++s) {
    int64_t c0 = s * kCols, c1 = std::min(d, c0 + kCols);
    for (int64_t i = 0; i < n; ++i) {
      float* row = dw + static_cast<int64_t>(tokens[i]) * d;
      const float* g = dout + i * d;
      for (int64_t c = c0; c < c1; ++c) row[c] += g[c];
    }
  }
}

void embedding_forward_slice(const int32_t* tokens, const float* w, float* out, int64_t n, int64_t d, int64_t begin,
                             int64_t rows) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const int64_t row = static_cast<int64_t>(tokens[i]) - begin;
    if (row >= 0 && row < rows) std::memcpy(out + i * d, w + row * d, d * sizeof(float));
    else std::fill(out + i * d, out + (i + 1) * d, 0.0f);
  }
}

void embedding_backward_slice(const int32_t* tokens, const float* dout, float* dw, int64_t n, int64_t d, int64_t begin,
                              int64_t rows) {
  constexpr int64_t kCols = 16;  // as embedding_backward: columns per thread, tokens in order
  int64_t slices = (d + kCols - 1) / kCols;
#pragma omp parallel for schedule(static)
  for (int64_t s = 0; s < slices; ++s) {
    int64_t c0 = s * kCols, c1 = std::min(d, c0 + kCols);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t row = static_cast<int64_t>(tokens[i]) - begin;
      if (row < 0 || row >= rows) continue;
      float* dst = dw + row * d;
      const float* g = dout + i * d;
      for (int64_t c = c0; c < c1; ++c) dst[c] += g[c];
    }
  }
}

}  // namespace titan::cpu
