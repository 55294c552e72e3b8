#include <algorithm>
#include <cmath>
#include <vector>

#include "titan/core/error.h"
#include "titan/ops/cpu/gemm.h"
#include "titan/ops/ops.h"

namespace titan::cpu {

namespace {
// Rows per chunk: about 16 MiB of fp32 logits, at least 16 rows.
int64_t chunk_rows(int64_t vocab) { return std::max<int64_t>(16, (int64_t{4} << 20) / std::max<int64_t>(vocab, 1)); }
}  // namespace

int64_t classifier_scratch_floats(int64_t n, int64_t vocab) { return std::min(chunk_rows(vocab), n) * vocab; }

ClassifierResult classifier_forward_backward(const float* h, const float* w, const int32_t* labels,
                                             int64_t n, int64_t d, int64_t vocab,
                                             int32_t ignore_index, float grad_scale, float* dh,
                                             float* dw, float* scratch) {
  const int64_t chunk = chunk_rows(vocab);
  float* logits = scratch;
  std::vector<double> row_loss(std::min(chunk, n));
  for (int64_t i = 0; i < n; ++i)
    TITAN_CHECK(labels[i] == ignore_index || (labels[i] >= 0 && labels[i] < vocab), "label ",
                labels[i], " at position ", i, " is outside the vocabulary [0, ", vocab, ")");
  ClassifierResult result;
  for (int64_t r0 = 0; r0 < n; r0 += chunk) {
    int64_t rows = std::min(chunk, n - r0);
    gemm(false, true, rows, vocab, d, 1.0f, h + r0 * d, d, w, d, 0.0f, logits, vocab);
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      float* z = logits + r * vocab;
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
      gemm(false, false, rows, d, vocab, 1.0f, logits, vocab, w, d, 0.0f, dh + r0 * d, d);
      gemm(true, false, vocab, d, rows, 1.0f, logits, vocab, h + r0 * d, d, 1.0f, dw, d);
    }
  }
  return result;
}

namespace {
// One row of this rank's vocabulary slice: logits z become d(loss * grad_scale)/dz =
// (softmax - onehot) * grad_scale, given the whole vocabulary's log-sum-exp.
void slice_softmax_gradient(float* z, int64_t vocab, double lse, int64_t label_in_slice, float grad_scale) {
  for (int64_t j = 0; j < vocab; ++j) z[j] = static_cast<float>(std::exp(z[j] - lse)) * grad_scale;
  if (label_in_slice >= 0 && label_in_slice < vocab) z[label_in_slice] -= grad_scale;
}

// A group of rows' partial dh (this slice's) and its dw, from the group's logit gradients.
void slice_backward(const float* dlogits, const float* h, const float* w, float* dh, float* dw, int64_t rows,
                    int64_t d, int64_t vocab) {
  gemm(false, false, rows, d, vocab, 1.0f, dlogits, vocab, w, d, 0.0f, dh, d);
  gemm(true, false, vocab, d, rows, 1.0f, dlogits, vocab, h, d, 1.0f, dw, d);
}

// Without loss parallel: each group's logits gathered whole, then the one-process softmax over
// them (global id k * vocab + j lies in rank k's slice at column j).
ClassifierResult classifier_gathered_logits(const float* h, const float* w, const int32_t* labels, int64_t n,
                                            int64_t d, int64_t vocab, int64_t vocab_begin, int32_t ignore_index,
                                            float grad_scale, float* dh, float* dw, float* logits,
                                            VocabShards& shards) {
  const int64_t chunk = chunk_rows(vocab);
  const int degree = shards.degree();
  std::vector<float> all(static_cast<size_t>(std::min(chunk, n) * vocab) * static_cast<size_t>(degree));
  std::vector<double> row_loss(static_cast<size_t>(std::min(chunk, n)));
  ClassifierResult result;
  for (int64_t r0 = 0; r0 < n; r0 += chunk) {
    const int64_t rows = std::min(chunk, n - r0), block = rows * vocab;
    gemm(false, true, rows, vocab, d, 1.0f, h + r0 * d, d, w, d, 0.0f, logits, vocab);
    shards.gather_logits(logits, all.data(), block);
    auto z = [&](int64_t r, int64_t id) { return all[static_cast<size_t>((id / vocab) * block + r * vocab + id % vocab)]; };
    const int64_t total = vocab * degree;
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      float* mine = logits + r * vocab;
      const int32_t label = labels[r0 + r];
      if (label == ignore_index) {
        row_loss[static_cast<size_t>(r)] = 0;
        std::fill(mine, mine + vocab, 0.0f);
        continue;
      }
      float mx = z(r, 0);
      for (int64_t j = 1; j < total; ++j) mx = std::max(mx, z(r, j));
      double sum = 0;
      for (int64_t j = 0; j < total; ++j) sum += std::exp(static_cast<double>(z(r, j) - mx));
      const double lse = mx + std::log(sum);
      row_loss[static_cast<size_t>(r)] = lse - z(r, label);
      slice_softmax_gradient(mine, vocab, lse, static_cast<int64_t>(label) - vocab_begin, grad_scale);
    }
    for (int64_t r = 0; r < rows; ++r) {
      if (labels[r0 + r] == ignore_index) continue;
      result.loss_sum += row_loss[static_cast<size_t>(r)];
      result.count += 1;
    }
    if (dh) slice_backward(logits, h + r0 * d, w, dh + r0 * d, dw, rows, d, vocab);
  }
  return result;
}
}  // namespace

ClassifierResult classifier_vocab_shard(const float* h, const float* w, const int32_t* labels, int64_t n, int64_t d,
                                        int64_t vocab, int64_t vocab_begin, int64_t vocab_total, int32_t ignore_index,
                                        float grad_scale, float* dh, float* dw, float* scratch, VocabShards& shards,
                                        bool gather_logits) {
  for (int64_t i = 0; i < n; ++i)
    TITAN_CHECK(labels[i] == ignore_index || (labels[i] >= 0 && labels[i] < vocab_total), "label ", labels[i],
                " at position ", i, " is outside the vocabulary [0, ", vocab_total, ")");
  TITAN_CHECK(vocab * shards.degree() == vocab_total, "vocabulary slices of ", vocab, " over ", shards.degree(),
              " ranks for a vocabulary of ", vocab_total);
  if (gather_logits)
    return classifier_gathered_logits(h, w, labels, n, d, vocab, vocab_begin, ignore_index, grad_scale, dh, dw, scratch,
                                      shards);
  const int64_t chunk = chunk_rows(vocab);
  float* logits = scratch;
  // Pass 1: per row, this slice's log-sum-exp and the label's logit where this slice holds it.
  std::vector<double> mine(static_cast<size_t>(2 * n), 0.0);
  for (int64_t r0 = 0; r0 < n; r0 += chunk) {
    const int64_t rows = std::min(chunk, n - r0);
    gemm(false, true, rows, vocab, d, 1.0f, h + r0 * d, d, w, d, 0.0f, logits, vocab);
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const float* z = logits + r * vocab;
      float mx = z[0];
      for (int64_t j = 1; j < vocab; ++j) mx = std::max(mx, z[j]);
      double sum = 0;
      for (int64_t j = 0; j < vocab; ++j) sum += std::exp(static_cast<double>(z[j] - mx));
      const int64_t label = static_cast<int64_t>(labels[r0 + r]) - vocab_begin;
      mine[static_cast<size_t>(2 * (r0 + r))] = mx + std::log(sum);
      mine[static_cast<size_t>(2 * (r0 + r) + 1)] = label >= 0 && label < vocab ? z[label] : 0.0;
    }
  }
  const int degree = shards.degree();
  std::vector<double> all(static_cast<size_t>(2 * n) * static_cast<size_t>(degree));
  shards.gather_stats(mine.data(), all.data(), 2 * n);
  // The whole vocabulary's log-sum-exp from the slices', in rank order (the same on every rank);
  // the label's logit is non-zero on one rank only.
  std::vector<double> lse(static_cast<size_t>(n));
  ClassifierResult result;
  for (int64_t i = 0; i < n; ++i) {
    double mx = -INFINITY, target = 0;
    for (int k = 0; k < degree; ++k) mx = std::max(mx, all[static_cast<size_t>(k * 2 * n + 2 * i)]);
    double sum = 0;
    for (int k = 0; k < degree; ++k) {
      sum += std::exp(all[static_cast<size_t>(k * 2 * n + 2 * i)] - mx);
      target += all[static_cast<size_t>(k * 2 * n + 2 * i + 1)];
    }
    lse[static_cast<size_t>(i)] = mx + std::log(sum);
    if (labels[i] == ignore_index) continue;
    result.loss_sum += lse[static_cast<size_t>(i)] - target;
    result.count += 1;
  }
  if (!dh) return result;
  // Pass 2: dlogits = (softmax - onehot) * grad_scale on this slice, then its partial dh and dw.
  for (int64_t r0 = 0; r0 < n; r0 += chunk) {
    const int64_t rows = std::min(chunk, n - r0);
    gemm(false, true, rows, vocab, d, 1.0f, h + r0 * d, d, w, d, 0.0f, logits, vocab);
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      float* z = logits + r * vocab;
      const int32_t label = labels[r0 + r];
      if (label == ignore_index) {
        std::fill(z, z + vocab, 0.0f);
        continue;
      }
      slice_softmax_gradient(z, vocab, lse[static_cast<size_t>(r0 + r)], static_cast<int64_t>(label) - vocab_begin,
                             grad_scale);
    }
    slice_backward(logits, h + r0 * d, w, dh + r0 * d, dw, rows, d, vocab);
  }
  return result;
}

}  // namespace titan::cpu
