// Op signatures of the CUDA backend: device pointers, work queued on `stream`, nothing
// synchronised unless the comment says so. Activations are bf16 (stored as uint16_t bit
// patterns so host code needs no CUDA headers), math and reductions in fp32, gradients of
// parameters fp32. No op uses atomics: every result is bit-identical from run to run.
// Layouts match the CPU reference (ops/ops.h); each op is tested against it (tests/gpu).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

namespace titan::cuda {

using bf16 = uint16_t;  // raw bfloat16 bits

// Number of usable CUDA devices; 0 (not an error) where there is no driver or GPU.
int device_count();
std::string device_name(int device);
// Bytes of memory on the current device.
size_t device_total_memory();

// bf16 <-> f32 casts; f32 -> bf16 rounds to nearest even like titan::f32_to_bf16.
void cast_f32_to_bf16(const float* in, bf16* out, int64_t n, cudaStream_t stream);
void cast_bf16_to_f32(const bf16* in, float* out, int64_t n, cudaStream_t stream);

// y = x / rms(x) * w per row of d; rstd[n] kept for backward.
void rmsnorm_forward(const bf16* x, const bf16* w, bf16* y, float* rstd, int64_t n, int64_t d, float eps,
                     cudaStream_t stream);
// The residual add fused with the next norm: h = x + r (rounded to bf16), y = rmsnorm(h).
void add_rmsnorm_forward(const bf16* x, const bf16* r, bf16* h, const bf16* w, bf16* y, float* rstd, int64_t n,
                         int64_t d, float eps, cudaStream_t stream);
// dx = d(rmsnorm)/dx . dy, added to dx_accum when `accumulate` (the residual stream), else
// written; dw (fp32) += the weight gradient, reduced over rows in a fixed order.
// `partial` holds rmsnorm_partial_floats(n, d) floats of scratch.
int64_t rmsnorm_partial_floats(int64_t n, int64_t d);
void rmsnorm_backward(const bf16* x, const bf16* w, const float* rstd, const bf16* dy, bf16* dx, bool accumulate,
                      float* dw, float* partial, int64_t n, int64_t d, cudaStream_t stream);

// In place on x[batch * seq, heads, head_dim]; adjacent pairs; cos/sin [seq, head_dim / 2] fp32.
// inverse = true rotates by -angle (the backward of the forward rotation).
void rope(bf16* x, const float* cos, const float* sin, int64_t batch, int64_t seq, int64_t heads, int64_t head_dim,
          bool inverse, cudaStream_t stream);

// g = silu(a) * b; backward writes da, db.
void swiglu_forward(const bf16* a, const bf16* b, bf16* g, int64_t count, cudaStream_t stream);
void swiglu_backward(const bf16* a, const bf16* b, const bf16* dg, bf16* da, bf16* db, int64_t count,
                     cudaStream_t stream);
// y = a + b (y may alias a or b).
void add(const bf16* a, const bf16* b, bf16* y, int64_t count, cudaStream_t stream);
// dst += src (fp32): gradient shards accumulating a reduce-scatter's result.
void accumulate_f32(float* dst, const float* src, int64_t count, cudaStream_t stream);

// out[i] = w[tokens[i]]. Under tensor parallel w holds the rows [first, first + rows) of the
// table and tokens outside them get zero rows (the ranks' partial lookups are then summed).
constexpr int64_t kAllRows = INT64_MAX;
void embedding_forward(const int32_t* tokens, const bf16* w, bf16* out, int64_t n, int64_t d, cudaStream_t stream,
                       int64_t first = 0, int64_t rows = kAllRows);
// Deterministic backward from a host-built grouping of positions by token:
// dw[ids[u] - first] += sum of dout[positions[offsets[u] .. offsets[u+1])] in position order, for
// u in [0, groups) whose token lies in [first, first + rows). Empty groups do nothing, so callers
// may pad to a fixed count (CUDA graphs).
void embedding_backward(const int32_t* ids, const int32_t* offsets, const int32_t* positions, int64_t unique,
                        const bf16* dout, float* dw, int64_t d, cudaStream_t stream, int64_t first = 0,
                        int64_t rows = kAllRows);

// Causal grouped-query attention (own flash-attention kernels; bf16 data, fp32 softmax and
// accumulation): q/o [batch, seq, heads, head_dim]; k/v [batch, seq, kv_heads, head_dim];
// lse [batch, heads, seq]. head_dim must be one of 16, 32, 64, 128 (attention_supported says).
// Two implementations: tensor cores (mma.sync, the default) and plain FMA (a cross-check).
struct AttentionShape {
  int64_t batch, seq, heads, kv_heads, head_dim;
};
enum class AttentionImpl { tensor_core, fma };
bool attention_supported(int64_t head_dim);
void attention_forward(const bf16* q, const bf16* k, const bf16* v, bf16* o, float* lse, const AttentionShape& s,
                       cudaStream_t stream, AttentionImpl impl = AttentionImpl::tensor_core);
// dq, dk, dv written; `delta` is scratch of batch * heads * seq floats (rowsum(dout * o)).
void attention_backward(const bf16* q, const bf16* k, const bf16* v, const bf16* o, const float* lse,
                        const bf16* dout, bf16* dq, bf16* dk, bf16* dv, float* delta, const AttentionShape& s,
                        cudaStream_t stream, AttentionImpl impl = AttentionImpl::tensor_core);

// Per row of bf16 logits [rows, vocab]: loss[r] = logsumexp - logit[label] (0 where the label
// is ignore_index), and with_grad the logits are overwritten by (softmax - onehot) * grad_scale.
void cross_entropy_rows(bf16* logits, const int32_t* labels, int64_t rows, int64_t vocab, int32_t ignore_index,
                        float grad_scale, float* loss, bool with_grad, cudaStream_t stream);

// Loss parallel (the vocabulary sliced over tensor-parallel ranks; the logits never gathered).
// Per row of a slice's bf16 logits [rows, vocab] (the slice starts at vocab_begin):
// stats[2r] = the slice's log-sum-exp, stats[2r + 1] = the label's logit where the slice holds
// the label, else 0.
void vocab_slice_stats(const bf16* logits, const int32_t* labels, int64_t rows, int64_t vocab, int64_t vocab_begin,
                       double* stats, cudaStream_t stream);
// From every slice's stats (`all`: degree blocks of 2n, rank 0's first): each row's whole
// log-sum-exp into lse[n] and its loss (0 where ignored) into loss[n], as the one-rank kernel.
void combine_vocab_stats(const double* all, const int32_t* labels, int64_t n, int degree, int32_t ignore_index,
                         float* lse, float* loss, cudaStream_t stream);
// A slice's logits overwritten by their gradient (softmax - onehot) * grad_scale, given each
// row's whole log-sum-exp (zeros on ignored rows).
void vocab_slice_gradient(bf16* logits, const int32_t* labels, const float* lse, int64_t rows, int64_t vocab,
                          int64_t vocab_begin, int32_t ignore_index, float grad_scale, cudaStream_t stream);

// Sum of x[0..n) in a fixed order into *out (one double); `scratch` holds reduce_scratch_doubles().
int64_t reduce_scratch_doubles();
void sum_f32(const float* x, int64_t n, double* out, double* scratch, cudaStream_t stream);
// Sum of squares of x[0..n), likewise.
void sum_squares_f32(const float* x, int64_t n, double* out, double* scratch, cudaStream_t stream);

// AdamW as titan::optim::AdamW (same operation order) over flat fp32 buffers, the gradient
// first multiplied by grad_coef (clipping); also writes the bf16 compute copy of w.
struct AdamWStep {
  float decay;       // 1 - lr * weight_decay
  float beta1, beta2, eps;
  float step_size;   // lr / bias_correction1
  float bias_correction2_sqrt;
  float grad_coef;   // 1, or max_norm / (norm + 1e-6) when clipping
};
void adamw(float* w, const float* g, float* m, float* v, bf16* w_bf16, int64_t n, const AdamWStep& step,
           cudaStream_t stream);
// The same for a captured CUDA graph, where nothing decided on the host per step may be baked
// in: the factors are read from device memory (`step`, its grad_coef ignored), clipping to
// max_norm (0 = none) is decided on the device from *grad_sq_sum as torch decides it, and the
// update is skipped when *loss_sum or the norm is not finite.
void adamw_device_step(float* w, const float* g, float* m, float* v, bf16* w_bf16, int64_t n, const AdamWStep* step,
                       const double* grad_sq_sum, const double* loss_sum, double max_norm, cudaStream_t stream);

}  // namespace titan::cuda
