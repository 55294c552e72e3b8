// The ops a model is written against, on one device's buffers: the CPU backend (fp32,
// OpenBLAS/OpenMP; ops/cpu) and the CUDA backend (bf16 activations and compute weights, fp32
// statistics and weight gradients; ops/cuda) implement it. A model calls these in its one op
// order and never sees a device, a dtype or a stream.
//
// Buffers: `void*` is a buffer of compute_dtype() elements (activations, compute weights);
// `float*` is fp32 (RMSNorm's 1/rms, attention's log-sum-exp, RoPE tables, weight gradients).
// Row-major; n = rows (batch * seq). Weight gradients accumulate (+=) unless the backend is told
// otherwise (the CUDA fused step writes them once).
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "titan/core/dtype.h"
#include "titan/core/tensor_parallel_hooks.h"
#include "titan/ops/float8.h"

namespace titan {

struct BatchShape {
  int64_t batch = 0, seq = 0;
  int64_t rows() const { return batch * seq; }
  bool operator==(const BatchShape&) const = default;
};

// How a linear's GEMMs run: in the backend's own precision (fp32 on the CPU, bf16 on the GPU),
// or in float8 under the recipe the backend was given. none: the tensor is not a GEMM weight.
enum class LinearPrecision { none, high, float8 };

// A linear's weight as the model's weight store hands it over.
struct LinearWeight {
  const void* w = nullptr;              // the whole weight, in the compute dtype
  const float* master = nullptr;        // its fp32 master where the store holds it whole apart from w
  const float* float8_scale = nullptr;  // set (FP8 all-gather): w holds the weight already cast to
                                        // e4m3 with this tensorwise scale (and dequantised on the CPU;
                                        // the e4m3 bytes themselves on a GPU, whose store also gives
  const float* float8_inv_scale = nullptr;  // 1/scale, both in device memory)
};

struct AttentionDims {
  int64_t batch, seq, heads, kv_heads, head_dim;
};

// Memory on a backend's device, released when the last handle goes.
class Buffer {
 public:
  Buffer() = default;
  Buffer(std::shared_ptr<void> memory, size_t bytes) : memory_(std::move(memory)), bytes_(bytes) {}
  template <typename T>
  T* as() const { return static_cast<T*>(memory_.get()); }
  size_t bytes() const { return bytes_; }
  bool empty() const { return memory_ == nullptr; }

 private:
  std::shared_ptr<void> memory_;
  size_t bytes_ = 0;
};

// What a backend sizes its own scratch by (chunks of logits, reduction partials, batch copies).
struct PassDims {
  BatchShape shape;
  int64_t dim = 0, heads = 0, head_dim = 0, vocab = 0;
  int64_t ffn_hidden = 0;
  bool float8 = false;  // some linear runs in float8: the backend keeps room for its casts
  // Tensor parallel: vocab is this rank's slice of degree; the classifier keeps room for the
  // slices' row statistics (loss parallel) or for the gathered logits (without it).
  int tp_degree = 1;
  bool loss_parallel = true;
  bool operator==(const PassDims&) const = default;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string description() const = 0;
  virtual DType compute_dtype() const = 0;
  // Zero-filled memory on this device.
  virtual Buffer allocate(size_t bytes) = 0;
  // Bytes of the buffers allocate() has handed out that are still alive, and of the scratch
  // prepare() keeps (both count as activations in memory reports).
  virtual size_t live_bytes() const = 0;
  // The backend's own scratch for passes of this shape (kept until a different one comes).
  virtual void prepare(const PassDims& dims) = 0;
  // fp32 host values into fp32 device memory (RoPE tables).
  virtual void upload_f32(float* dst, const float* src, int64_t count) = 0;

  // The batch of the next pass (host arrays of n; labels may be null for logits). The embedding
  // and the classifier read it; the caller may reuse the arrays once this returns.
  // Ids outside [0, vocab) and labels other than those or ignore_index are refused.
  virtual void load_batch(const int32_t* tokens, const int32_t* labels, int64_t n, int64_t vocab,
                          int32_t ignore_index, bool backward_follows) = 0;
  // w holds the embedding's rows [vocab_begin, vocab_begin + vocab) (the whole table unless
  // tensor parallel slices it); other tokens' output rows are zero.
  virtual void embedding_forward(const void* w, void* out, int64_t n, int64_t d, int64_t vocab_begin, int64_t vocab) = 0;
  // dw[token - vocab_begin] += dout rows of the tokens in the slice, in a fixed order.
  virtual void embedding_backward(const void* dout, float* dw, int64_t n, int64_t d, int64_t vocab_begin,
                                  int64_t vocab) = 0;

  // The float8 recipe of the linears whose precision is float8 (before the first such call).
  virtual void set_float8_recipe(const float8::Recipe& recipe) = 0;
  // y[n, out] = x[n, in] @ w[out, in]^T. A float8 linear casts the weight from its master
  // where given, and does not cast it again where the store did (w.float8_scale).
  virtual void linear_forward(const void* x, const LinearWeight& w, void* y, int64_t n, int64_t in, int64_t out,
                              LinearPrecision precision) = 0;
  // dx = dy @ w (dx_beta 0 writes, 1 adds); dw += dy^T @ x.
  virtual void linear_backward(const void* x, const LinearWeight& w, const void* dy, void* dx, float* dw, int64_t n,
                               int64_t in, int64_t out, float dx_beta, LinearPrecision precision) = 0;

  // y = x / rms(x) * w per row; rstd[n] kept for backward.
  virtual void rmsnorm_forward(const void* x, const void* w, void* y, float* rstd, int64_t n, int64_t d,
                               float eps) = 0;
  // The residual add and the next norm: h = x + r, y = rmsnorm(h) (one kernel where fused).
  virtual void add_rmsnorm_forward(const void* x, const void* r, void* h, const void* w, void* y, float* rstd,
                                   int64_t n, int64_t d, float eps) = 0;
  // dx = d(rmsnorm)/dx . dy, added to dx when `accumulate` (the residual stream), else written;
  // dw += the weight gradient.
  virtual void rmsnorm_backward(const void* x, const void* w, const float* rstd, const void* dy, void* dx,
                                bool accumulate, float* dw, int64_t n, int64_t d) = 0;

  // In place on x[batch * seq, heads, head_dim], adjacent pairs; cos/sin [seq, head_dim / 2].
  // inverse rotates back (the backward).
  virtual void rope(void* x, const float* cos, const float* sin, int64_t batch, int64_t seq, int64_t heads,
                    int64_t head_dim, bool inverse) = 0;
  // Causal grouped-query attention: q/o [batch, seq, heads, hd], k/v [batch, seq, kv_heads, hd],
  // lse [batch, heads, seq].
  virtual void attention_forward(const void* q, const void* k, const void* v, void* o, float* lse,
                                 const AttentionDims& s) = 0;
  virtual void attention_backward(const void* q, const void* k, const void* v, const void* o, const float* lse,
                                  const void* dout, void* dq, void* dk, void* dv, const AttentionDims& s) = 0;

  // One query row per head against the first `positions` rows of a KV cache (generation):
  // q/o [heads, hd], caches [max_len, kv_heads, hd].
  virtual void attention_decode(const void* q, const void* k_cache, const void* v_cache, void* o, int64_t positions,
                                int64_t heads, int64_t kv_heads, int64_t head_dim) = 0;

  // g = silu(a) * b and its backward.
  virtual void swiglu_forward(const void* a, const void* b, void* g, int64_t count) = 0;
  virtual void swiglu_backward(const void* a, const void* b, const void* dg, void* da, void* db, int64_t count) = 0;
  // y = a + b (y may be a or b).
  virtual void add(const void* a, const void* b, void* y, int64_t count) = 0;
  // dst = src, count elements of the compute dtype.
  virtual void copy(void* dst, const void* src, int64_t count) = 0;

  // Output projection + cross-entropy against the loaded labels, over groups of rows so the
  // logits of the whole batch never exist at once. With dh: dh = d(loss_sum * grad_scale)/dh
  // and dw += its weight gradient. The loss sum stays with the backend until loss_sum().
  virtual void classifier(const void* h, const void* w, void* dh, float* dw, int64_t n, int64_t d, int64_t vocab,
                          int32_t ignore_index, float grad_scale) = 0;
  // Tensor parallel: the same over the output weight's rows [vocab_begin, vocab_begin + vocab)
  // of a vocabulary of vocab_total; dh gets this slice's partial sums, loss_sum() the whole loss.
  // loss_parallel: each row's statistics combined over the slices through `shards`; else the
  // logits gathered whole (torchtitan's disable_loss_parallel).
  virtual void classifier_vocab_shard(const void* h, const void* w, void* dh, float* dw, int64_t n, int64_t d,
                                      int64_t vocab, int64_t vocab_begin, int64_t vocab_total, int32_t ignore_index,
                                      float grad_scale, VocabShards& shards, bool loss_parallel) = 0;
  // The last classifier's loss sum (waits for it).
  virtual double loss_sum() = 0;
  // Logits [n, vocab] to host memory (tests, generation).
  virtual void logits(const void* h, const void* w, float* host_logits, int64_t n, int64_t d, int64_t vocab) = 0;
};

}  // namespace titan
