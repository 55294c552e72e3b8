// Op signatures of the CPU reference backend (fp32, row-major, OpenMP + OpenBLAS).
// Each op has a forward and, where it has inputs to differentiate, a backward. Reductions
// use a fixed partition of the work, so results do not depend on the thread count.
// Conventions: n = rows (batch * seq), "accumulate" means += into the output.
#pragma once
#include <cstdint>

#include "titan/core/tensor_parallel_hooks.h"

namespace titan::cpu {

// y[n, out] = x[n, in] @ w[out, in]^T
void linear_forward(const float* x, const float* w, float* y, int64_t n, int64_t in, int64_t out);
// dx = dy @ w (dx_beta = 0 overwrites, 1 accumulates); dw += dy^T @ x.
void linear_backward(const float* x, const float* w, const float* dy, float* dx, float* dw,
                     int64_t n, int64_t in, int64_t out, float dx_beta);

// y = x / rms(x) * w per row; rstd[n] saved for backward.
void rmsnorm_forward(const float* x, const float* w, float* y, float* rstd, int64_t n, int64_t d,
                     float eps);
// dx overwritten; dw accumulated.
void rmsnorm_backward(const float* x, const float* w, const float* rstd, const float* dy, float* dx,
                      float* dw, int64_t n, int64_t d);

// Rotary tables for positions [0, seq): cos/sin[seq, head_dim / 2].
// Llama 3.1's RoPE frequency scaling (Hugging Face rope_type "llama3"): frequencies whose
// wavelength exceeds original_max_positions / low_freq_factor are divided by `factor`, those
// under original_max_positions / high_freq_factor kept, those between blended. factor 0: none.
struct RopeScaling {
  double factor = 0, low_freq_factor = 1, high_freq_factor = 4;
  int64_t original_max_positions = 8192;
  bool operator==(const RopeScaling&) const = default;
};
void rope_tables(float* cos, float* sin, int64_t seq, int64_t head_dim, double theta, const RopeScaling& scaling = {});
// In place on x[batch * seq, heads, head_dim]; pairs are adjacent elements (2i, 2i+1).
void rope_forward(float* x, const float* cos, const float* sin, int64_t batch, int64_t seq,
                  int64_t heads, int64_t head_dim);
// In place: applies the inverse rotation to the gradient.
void rope_backward(float* dx, const float* cos, const float* sin, int64_t batch, int64_t seq,
                   int64_t heads, int64_t head_dim);

struct AttentionShape {
  int64_t batch, seq, heads, kv_heads, head_dim;
};
// Causal grouped-query attention, blocked (flash-style): memory per thread is one tile, never
// a seq x seq matrix. q/o: [batch, seq, heads, head_dim]; k/v: [batch, seq, kv_heads, head_dim];
// lse: [batch, heads, seq] (log-sum-exp of the scaled scores, for backward).
void attention_forward(const float* q, const float* k, const float* v, float* o, float* lse,
                       const AttentionShape& s);
// dq, dk, dv overwritten.
void attention_backward(const float* q, const float* k, const float* v, const float* o,
                        const float* lse, const float* dout, float* dq, float* dk, float* dv,
                        const AttentionShape& s);

// One query row per head against the first `positions` cached rows (KV-cache decoding):
// q/o [heads, head_dim]; caches [max_len, kv_heads, head_dim].
void attention_decode(const float* q, const float* k_cache, const float* v_cache, float* o, int64_t positions,
                      int64_t heads, int64_t kv_heads, int64_t head_dim);

// g = silu(a) * b elementwise.
void swiglu_forward(const float* a, const float* b, float* g, int64_t count);
void swiglu_backward(const float* a, const float* b, const float* dg, float* da, float* db,
                     int64_t count);

// out[i] = w[tokens[i]]; tokens must lie in [0, vocab).
void embedding_forward(const int32_t* tokens, const float* w, float* out, int64_t n, int64_t vocab,
                       int64_t d);
// dw[tokens[i]] += dout[i], in token order (deterministic).
void embedding_backward(const int32_t* tokens, const float* dout, float* dw, int64_t n, int64_t d);
// Tensor parallel: w holds rows [begin, begin + rows) of the embedding; other tokens' rows of
// out are zero (the ranks' outputs sum to the whole lookup), and their gradients go nowhere.
void embedding_forward_slice(const int32_t* tokens, const float* w, float* out, int64_t n, int64_t d, int64_t begin,
                             int64_t rows);
void embedding_backward_slice(const int32_t* tokens, const float* dout, float* dw, int64_t n, int64_t d, int64_t begin,
                              int64_t rows);

struct ClassifierResult {
  double loss_sum = 0;  // sum over counted tokens of -log softmax(logits)[label]
  int64_t count = 0;    // tokens whose label is not ignore_index
};
// Output projection + cross-entropy, chunked over rows so the fp32 logits of the whole batch
// are never alive at once. With dh != nullptr also writes dh = d(loss * grad_scale)/dh and
// accumulates dw; grad_scale is usually 1 / (counted tokens of the global batch).
// `scratch` holds classifier_scratch_floats(n, vocab) floats for one chunk of logits.
int64_t classifier_scratch_floats(int64_t n, int64_t vocab);
ClassifierResult classifier_forward_backward(const float* h, const float* w, const int32_t* labels,
                                             int64_t n, int64_t d, int64_t vocab,
                                             int32_t ignore_index, float grad_scale, float* dh,
                                             float* dw, float* scratch);
// Tensor parallel: the same over this rank's rows [vocab_begin, vocab_begin + vocab) of the
// output weight, a slice of a vocabulary of vocab_total; dh gets this slice's partial sums, the
// loss sum is the whole vocabulary's, the same on every rank. Loss parallel: each row's
// log-sum-exp and label logit are combined over the slices through `shards` (one exchange of
// 2 n values); the logits are computed twice (statistics, then gradients) rather than kept.
// Without it (gather_logits) each group's logits are gathered whole and the softmax taken over
// them in the vocabulary's order, as one process does.
ClassifierResult classifier_vocab_shard(const float* h, const float* w, const int32_t* labels, int64_t n, int64_t d,
                                        int64_t vocab, int64_t vocab_begin, int64_t vocab_total, int32_t ignore_index,
                                        float grad_scale, float* dh, float* dw, float* scratch, VocabShards& shards,
                                        bool gather_logits);

// y += x
void add_inplace(float* y, const float* x, int64_t count);

}  // namespace titan::cpu
