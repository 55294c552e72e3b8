// The Llama 3 model, written once: embedding, blocks (RMSNorm, RoPE/GQA attention, SwiGLU,
// residuals), final norm and the fused classifier, forward and backward, in one op order over
// the backend interface (ops/backend.h). It knows no device, no dtype and no rank: weights
// come from a WeightStore, parallelism acts through the unit hooks, and the buffers come from
// the one activation plan, whose activation checkpointing policy decides what is recomputed.
#pragma once
#include <cstdint>
#include <vector>

#include "titan/core/module_hooks.h"
#include "titan/core/tensor_parallel_hooks.h"
#include "titan/core/trace.h"
#include "titan/core/weight_store.h"
#include "titan/models/llama3/activation_plan.h"
#include "titan/models/llama3/float8_linears.h"
#include "titan/models/llama3/layout.h"
#include "titan/ops/backend.h"
#include "titan/ops/ops.h"

namespace titan::llama3 {

// Keys and values of every block for the positions decoded so far (titan generate), with RoPE
// tables for all `max_len` positions.
struct KvCache {
  int64_t max_len = 0, position = 0;
  std::vector<Buffer> k, v;  // per block [max_len, kv_dim]
  Buffer cos, sin;           // [max_len, head_dim / 2]
};

class Model {
 public:
  // `tp`: the tensor-parallel slices this model's weights are (the whole tensors at degree 1).
  Model(const ModelArgs& args, Backend& backend, WeightStore& weights, TensorParallelRank tp = {});
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const ModelArgs& args() const { return args_; }
  const ModelLayout& layout() const { return layout_; }
  Backend& backend() { return backend_; }
  // Called at every unit's start and end (unit 0: embedding, final norm, output; 1 + i: layers.i).
  void set_hooks(ModuleHooks* hooks) { hooks_ = hooks; }
  // Tensor parallel (a layout of degree > 1 needs them): the collectives at sequence parallel's
  // region boundaries and the classifier's (parallel/tensor_parallel.h); without loss parallel
  // the classifier gathers its logits whole.
  void set_tensor_parallel(TensorParallelHooks* tp, bool loss_parallel = true);
  // Takes effect at the next plan().
  void set_activation_checkpointing(const ActivationCheckpointing& ac);
  // These linears run in float8 under the recipe (the backend gets it); the next plan() keeps
  // room for their casts.
  void set_float8_linears(const Float8Linears& f);
  // Buffers for this batch shape (kept until a different shape or policy comes).
  void plan(BatchShape s);
  const ActivationPlan& activation_plan() const { return plan_; }
  // Counts the times plan() allocated anew: whoever keeps pointers into the buffers (a captured
  // CUDA graph) must drop them when it changes.
  uint64_t plan_generation() const { return plan_generation_; }

  // Forward, fused loss, backward: weight gradients accumulate d(loss_sum * grad_scale).
  // tokens and labels are host arrays of s.rows(). A recording tracer gets one span per block
  // forward and backward, the loss and the embedding.
  cpu::ClassifierResult forward_backward(const int32_t* tokens, const int32_t* labels, BatchShape s, float grad_scale,
                                         int32_t ignore_index = -100, Tracer* tracer = nullptr);
  cpu::ClassifierResult forward_loss(const int32_t* tokens, const int32_t* labels, BatchShape s,
                                     int32_t ignore_index = -100);
  // Logits [rows, vocab] to host memory.
  void forward_logits(const int32_t* tokens, BatchShape s, float* logits);
  // The pass without loading the batch or reading the loss, so an executor can queue it (or
  // capture it in a CUDA graph): load_batch must have run for this shape.
  void load_batch(const int32_t* tokens, const int32_t* labels, BatchShape s, bool backward_follows,
                  int32_t ignore_index = -100);
  void enqueue_forward_backward(BatchShape s, float grad_scale, int32_t ignore_index, Tracer* tracer = nullptr);

  // Token-by-token generation through the same blocks: one row per step, attending to the cache.
  KvCache make_kv_cache(int64_t max_len);
  // Feeds `token` at cache.position; writes the logits [vocab] of the token after it to host memory.
  void decode(int32_t token, KvCache& cache, float* logits);

 private:
  struct BlockWeights {
    size_t wq, wk, wv, wo, w1, w2, w3, attention_norm, ffn_norm;
  };
  // Rows of the residual stream on this rank: all of them, or 1/degree under tensor parallel.
  int64_t stream_rows(BatchShape s) const { return s.rows() / plan_.tp_degree; }
  // A norm's output on this rank's rows lands in `y`, gathered over all rows under TP.
  void* norm_output(int buffer) const { return tp_ ? act(plan_.norm_shard) : act(buffer); }
  void gather_norm_output(int buffer, int64_t rows);
  // A row-wise linear's output (or the embedding's): partial sums under TP, reduce-scattered
  // into `buffer`'s rows by scatter_partial.
  void* partial_output(int buffer) const { return tp_ ? act(plan_.partial) : act(buffer); }
  void scatter_partial(int buffer, int64_t rows);
  // d(residual stream) over all rows: gathered under TP, else the stream's own buffer.
  const void* gathered_gradient(int64_t rows);
  // A norm input's gradient from all rows' partial sums: this rank's rows (reduce-scattered under TP).
  const void* scattered_gradient(int buffer, int64_t rows);
  void classify(void* dh, float* dw, int64_t n, int32_t ignore_index, float grad_scale);
  void* act(int buffer) const { return buffers_[static_cast<size_t>(buffer)].as<void>(); }
  float* f32(int buffer) const { return buffers_[static_cast<size_t>(buffer)].as<float>(); }
  const void* w(size_t i) { return weights_.weight(i); }
  float* dw(size_t i) { return weights_.grad(i); }
  LinearWeight linear_weight(size_t i) {
    return {weights_.weight(i), weights_.master(i), weights_.float8_scale(i), weights_.float8_inv_scale(i)};
  }
  void linear(const void* x, size_t weight, void* y, int64_t n);
  void linear_backward(const void* x, size_t weight, const void* dy, void* dx, int64_t n, float dx_beta);
  void forward_hidden(BatchShape s, bool backward_follows, Tracer* tracer, KvCache* cache = nullptr);
  // With a cache: one row at cache->position, its keys and values appended to the cache.
  void block_forward(int64_t layer, BatchShape s, KvCache* cache = nullptr);
  // selective_op: recomputes what the block did not keep (wk, wo and w3's outputs and the
  // elementwise tensors) from its input and the kept outputs.
  void block_recompute_selected_ops(int64_t layer, BatchShape s);
  // On entry d_resid holds d(block output); on return d(block input).
  void block_backward(int64_t layer, BatchShape s);
  void hook_before_forward(int unit) { if (hooks_) hooks_->before_forward(unit); }
  void hook_after_forward(int unit, bool backward_follows) { if (hooks_) hooks_->after_forward(unit, backward_follows); }
  void hook_before_backward(int unit) { if (hooks_) hooks_->before_backward(unit); }
  void hook_after_backward(int unit) { if (hooks_) hooks_->after_backward(unit); }

  ModelArgs args_;
  ModelLayout layout_;
  Backend& backend_;
  WeightStore& weights_;
  ModuleHooks* hooks_ = nullptr;
  TensorParallelHooks* tp_ = nullptr;
  bool loss_parallel_ = true;
  // This rank's share, read from its weights' shapes: query and KV heads, feed-forward width,
  // and the vocabulary rows [vocab_begin_, + vocab_) of its embedding and classifier.
  int64_t heads_ = 0, kv_heads_ = 0, ffn_ = 0, vocab_ = 0, vocab_begin_ = 0;
  std::vector<BlockWeights> blocks_;
  size_t embedding_ = 0, norm_ = 0, output_ = 0;
  ActivationCheckpointing ac_;
  bool ac_planned_ = false;  // plan_ follows ac_
  ActivationPlan plan_;
  uint64_t plan_generation_ = 0;
  std::vector<Buffer> buffers_;  // one per plan_.buffers entry
};

}  // namespace titan::llama3
