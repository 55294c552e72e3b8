// Softmax cross-entropy over rows of bf16 logits, their gradient written in place: the middle
// of the fused classifier (the GEMMs around it are in models/llama3/cuda_transformer.cpp).
// bf16 logits (as torch's bf16 autocast gives them) halve the bytes of the GEMM's output and of
// both passes here; with fp32 logits these passes took 4.4 of the 1B step's 130 ms of kernels on
// an H200 (2026-11-26), the largest share of the classifier after its GEMMs.
#include "titan/ops/cuda/cuda_check.h"
#include "titan/ops/cuda/cuda_ops.h"
#include "titan/ops/cuda/kernel_util.cuh"

namespace titan::cuda {

using namespace detail;

namespace {
constexpr int kThreads = 512;

// Calls f(j, z[j]) on every element of a row of n bf16 (with kWrite, f may overwrite z[j]
// through the reference), 8 per 16-byte access where the row is aligned; the unaligned head
// and tail go one element at a time. Each element is visited by one thread.
template <bool kWrite, typename F>
__device__ __forceinline__ void for_each_in_row(bf16_t* z, int64_t n, F f) {
  const int64_t misalign = static_cast<int64_t>(reinterpret_cast<uintptr_t>(z) % 16) / 2;
  const int64_t head0 = misalign == 0 ? 0 : 8 - misalign;
  const int64_t head = head0 < n ? head0 : n;
  for (int64_t j = threadIdx.x; j < head; j += blockDim.x) f(j, z[j]);
  const int64_t vecs = (n - head) / 8;
  uint4* zv = reinterpret_cast<uint4*>(z + head);
  for (int64_t i = threadIdx.x; i < vecs; i += blockDim.x) {
    uint4 u = zv[i];
    bf16_t* e = reinterpret_cast<bf16_t*>(&u);
#pragma unroll
    for (int k = 0; k < 8; ++k) f(head + 8 * i + k, e[k]);
    if (kWrite) zv[i] = u;
  }
  for (int64_t j = head + 8 * vecs + threadIdx.x; j < n; j += blockDim.x) f(j, z[j]);
}

// One block per row: the row's max and sum of exp(z - max), online in one pass (every thread
// gets both).
struct RowMaxSum {
  float max, sum;
};
__device__ __forceinline__ RowMaxSum row_max_sum(bf16_t* z, int64_t vocab, float* red) {
  float m = -INFINITY, s = 0;
  for_each_in_row<false>(z, vocab, [&](int64_t, bf16_t& x) {
    const float v = to_f(x);
    if (v > m) {
      s = s * __expf(m - v) + 1.0f;
      m = v;
    } else {
      s += __expf(v - m);
    }
  });
  const float mx = block_max(m, red);
  return {mx, block_sum(m == -INFINITY ? 0.0f : s * __expf(m - mx), red)};
}

// One block per row: one pass for an online (max, sum of exp), one that overwrites the logits
// with their gradient.
__global__ void cross_entropy_kernel(bf16_t* logits, const int32_t* labels, int64_t vocab, int32_t ignore_index,
                                     float grad_scale, float* loss, bool with_grad) {
  __shared__ float red[32];
  bf16_t* z = logits + blockIdx.x * vocab;
  const int32_t label = labels[blockIdx.x];
  const bool ignored = label == ignore_index;
  // Read before the barriers in the reductions below; the gradient pass overwrites it after them.
  const float label_logit = threadIdx.x == 0 && !ignored ? to_f(z[label]) : 0.0f;
  const RowMaxSum r = row_max_sum(z, vocab, red);
  const float mx = r.max, total = r.sum;
  const float lse = mx + __logf(total);
  if (threadIdx.x == 0) loss[blockIdx.x] = ignored ? 0.0f : lse - label_logit;
  if (!with_grad) return;
  for_each_in_row<true>(z, vocab, [&](int64_t j, bf16_t& x) {
    float g = ignored ? 0.0f : __expf(to_f(x) - lse) * grad_scale;
    if (j == label) g -= grad_scale;
    x = to_bf(g);
  });
}
// Loss parallel, pass 1: one block per row of a vocabulary slice, the same online (max, sum of
// exp) as above.
__global__ void vocab_slice_stats_kernel(const bf16_t* logits, const int32_t* labels, int64_t vocab,
                                         int64_t vocab_begin, double* stats) {
  __shared__ float red[32];
  const bf16_t* z = logits + blockIdx.x * vocab;
  const int64_t label = static_cast<int64_t>(labels[blockIdx.x]) - vocab_begin;
  const RowMaxSum r = row_max_sum(const_cast<bf16_t*>(z), vocab, red);
  const float mx = r.max, total = r.sum;
  if (threadIdx.x != 0) return;
  stats[2 * blockIdx.x] = static_cast<double>(mx) + log(static_cast<double>(total));
  stats[2 * blockIdx.x + 1] = label >= 0 && label < vocab ? static_cast<double>(to_f(z[label])) : 0.0;
}

// One thread per row: the slices combined in rank order (the same sum on every rank).
__global__ void combine_vocab_stats_kernel(const double* all, const int32_t* labels, int64_t n, int degree,
                                           int32_t ignore_index, float* lse, float* loss) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  double mx = -INFINITY, sum = 0, target = 0;
  for (int k = 0; k < degree; ++k) mx = fmax(mx, all[k * 2 * n + 2 * i]);
  for (int k = 0; k < degree; ++k) {
    sum += exp(all[k * 2 * n + 2 * i] - mx);
    target += all[k * 2 * n + 2 * i + 1];
  }
  const double whole = mx + log(sum);
  lse[i] = static_cast<float>(whole);
  loss[i] = labels[i] == ignore_index ? 0.0f : static_cast<float>(whole - target);
}

// Loss parallel, pass 2: one block per row, the slice's logits overwritten by their gradient.
__global__ void vocab_slice_gradient_kernel(bf16_t* logits, const int32_t* labels, const float* lse, int64_t vocab,
                                            int64_t vocab_begin, int32_t ignore_index, float grad_scale) {
  bf16_t* z = logits + blockIdx.x * vocab;
  const bool ignored = labels[blockIdx.x] == ignore_index;
  const int64_t label = static_cast<int64_t>(labels[blockIdx.x]) - vocab_begin;
  const float row_lse = lse[blockIdx.x];
  for_each_in_row<true>(z, vocab, [&](int64_t j, bf16_t& x) {
    float g = ignored ? 0.0f : __expf(to_f(x) - row_lse) * grad_scale;
    if (!ignored && j == label) g -= grad_scale;
    x = to_bf(g);
  });
}
}  // namespace

void vocab_slice_stats(const bf16* logits, const int32_t* labels, int64_t rows, int64_t vocab, int64_t vocab_begin,
                       double* stats, cudaStream_t stream) {
  if (rows == 0) return;
  vocab_slice_stats_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(as_bf16(logits), labels, vocab,
                                                                                 vocab_begin, stats);
  TITAN_CUDA_CHECK_LAUNCH();
}

void combine_vocab_stats(const double* all, const int32_t* labels, int64_t n, int degree, int32_t ignore_index,
                         float* lse, float* loss, cudaStream_t stream) {
  if (n == 0) return;
  constexpr int kRowThreads = 256;
  combine_vocab_stats_kernel<<<static_cast<unsigned>((n + kRowThreads - 1) / kRowThreads), kRowThreads, 0, stream>>>(
      all, labels, n, degree, ignore_index, lse, loss);
  TITAN_CUDA_CHECK_LAUNCH();
}

void vocab_slice_gradient(bf16* logits, const int32_t* labels, const float* lse, int64_t rows, int64_t vocab,
                          int64_t vocab_begin, int32_t ignore_index, float grad_scale, cudaStream_t stream) {
  if (rows == 0) return;
  vocab_slice_gradient_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
      as_bf16(logits), labels, lse, vocab, vocab_begin, ignore_index, grad_scale);
  TITAN_CUDA_CHECK_LAUNCH();
}

void cross_entropy_rows(bf16* logits, const int32_t* labels, int64_t rows, int64_t vocab, int32_t ignore_index,
                        float grad_scale, float* loss, bool with_grad, cudaStream_t stream) {
  if (rows == 0) return;
  cross_entropy_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(as_bf16(logits), labels, vocab,
                                                                             ignore_index, grad_scale, loss, with_grad);
  TITAN_CUDA_CHECK_LAUNCH();
}

}  // namespace titan::cuda
