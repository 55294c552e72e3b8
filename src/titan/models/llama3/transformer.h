// The Llama 3 transformer: embedding, blocks, final norm and the fused output classifier.
// Activations live in one plan made per batch shape (llm.c style): nothing is allocated
// inside a step.
#pragma once
#include <deque>
#include <string>
#include <vector>

#include "titan/core/module_hooks.h"
#include "titan/core/trace.h"
#include "titan/models/llama3/attention.h"
#include "titan/models/llama3/feed_forward.h"
#include "titan/models/llama3/layout.h"
#include "titan/models/llama3/model_args.h"
#include "titan/ops/ops.h"

namespace titan::llama3 {

// Activation checkpointing (torchtitan's [activation_checkpoint]): which activations a
// block keeps from forward to backward, and which it recomputes in backward. Recomputation
// runs the same deterministic kernels on the same inputs, so losses are bit-identical.
struct ActivationCheckpointing {
  enum class Mode { none, full, selective_layer, selective_op };
  Mode mode = Mode::none;
  int64_t every = 1;  // selective_layer: blocks whose 1-based index is a multiple of this
  // Whether block i (0-based) keeps only its input and recomputes everything else.
  bool recomputes_block(int64_t i) const {
    return mode == Mode::full || (mode == Mode::selective_layer && (i + 1) % every == 0);
  }
};

class TransformerBlock {
 public:
  // In selective_op mode the elementwise tensors (xn, h, hn, ffn.g) are shared by all blocks
  // and recomputed; the matmul and attention outputs (q, k, v, out, lse, proj, a1, a3) stay.
  struct Saved {
    Tensor xn, rstd1;  // attention_norm(x) and its 1/rms
    Tensor h;          // x + attention(...)
    Tensor hn, rstd2;  // ffn_norm(h)
    Tensor proj;       // wo's output before the residual add (selective_op only)
    Attention::Saved attn;
    FeedForward::Saved ffn;
  };
  struct Workspace {
    Tensor dxn;  // gradient at a norm's output
    Tensor dnorm;  // gradient at a norm's input, before it joins the residual stream
    Attention::Workspace attn;
    FeedForward::Workspace ffn;
  };

  TransformerBlock(Attention attention, FeedForward feed_forward, RMSNorm attention_norm, RMSNorm ffn_norm)
      : attention_(std::move(attention)), feed_forward_(std::move(feed_forward)),
        attention_norm_(attention_norm), ffn_norm_(ffn_norm) {}
  Saved make_saved(BatchShape s, int64_t dim) const;
  Workspace make_workspace(BatchShape s, int64_t dim) const;
  // out = h + ffn(ffn_norm(h)), h = x + attention(attention_norm(x)).
  void forward(const float* x, float* out, Saved& sv, const RopeTables& rope, BatchShape s) const;
  // Recomputes the elementwise tensors from x and the kept matmul outputs (selective_op).
  void recompute_elementwise(const float* x, Saved& sv, BatchShape s) const;
  // On entry d_resid holds d(out); on return it holds d(x).
  void backward(const float* x, float* d_resid, const Saved& sv, Workspace& ws,
                const RopeTables& rope, BatchShape s) const;

 private:
  Attention attention_;
  FeedForward feed_forward_;
  RMSNorm attention_norm_, ffn_norm_;
};

struct MemoryReport {
  int64_t parameters = 0;              // elements, all parameters
  int64_t embedding_parameters = 0;    // elements of tok_embeddings
  size_t parameter_bytes = 0, gradient_bytes = 0, optimizer_bytes = 0, activation_bytes = 0;
};

class Transformer {
 public:
  // Parameters are created as shards of `rank` in `world` (world 1: whole parameters).
  explicit Transformer(const ModelArgs& args, int rank = 0, int world = 1);
  Transformer(const Transformer&) = delete;
  Transformer& operator=(const Transformer&) = delete;

  const ModelArgs& args() const { return args_; }
  const ModelLayout& layout() const { return layout_; }
  // In the layout table's order.
  std::deque<Parameter>& parameters() { return params_; }
  Parameter& parameter(const std::string& name);

  // The model's units, for wrappers such as FSDP: unit 0 is the root (tok_embeddings, norm,
  // output), unit 1 + i is layers.i.
  std::vector<std::vector<Parameter*>> units();
  // Called at every unit's start and end in forward and backward (nullptr: none). Without
  // hooks every parameter's `full` must already hold the whole weight.
  void set_hooks(ModuleHooks* hooks) { hooks_ = hooks; }

  // Layout-invariant init (REFERENCE.md's torchtitan rules) of this rank's shards.
  void init_weights(uint64_t seed);
  void zero_grad();

  // Allocates activations for this batch shape (kept until a different shape comes).
  void plan(BatchShape s);
  // Takes effect at the next plan().
  void set_activation_checkpointing(const ActivationCheckpointing& ac);
  // Forward, fused loss, backward. Parameter grads accumulate the gradient of
  // loss_sum * grad_scale (grad_scale = 1 / counted tokens gives the mean loss).
  // A recording tracer gets one span per block forward and backward, the loss and the embedding.
  cpu::ClassifierResult forward_backward(const int32_t* tokens, const int32_t* labels,
                                         BatchShape s, float grad_scale, int32_t ignore_index = -100,
                                         Tracer* tracer = nullptr);
  // Forward and loss only.
  cpu::ClassifierResult forward_loss(const int32_t* tokens, const int32_t* labels, BatchShape s,
                                     int32_t ignore_index = -100);
  // Forward to logits [rows, vocab] (tests and generation).
  void forward_logits(const int32_t* tokens, BatchShape s, float* logits);

  MemoryReport memory() const;

 private:
  void forward_hidden(const int32_t* tokens, BatchShape s, bool backward_follows, Tracer* tracer = nullptr);
  void hook_before_forward(int unit) { if (hooks_) hooks_->before_forward(unit); }
  void hook_after_forward(int unit, bool backward_follows) { if (hooks_) hooks_->after_forward(unit, backward_follows); }
  void hook_before_backward(int unit) { if (hooks_) hooks_->before_backward(unit); }
  void hook_after_backward(int unit) { if (hooks_) hooks_->after_backward(unit); }

  ModelArgs args_;
  ModelLayout layout_;
  std::deque<Parameter> params_;  // deque: modules keep pointers, so elements never move
  Embedding tok_embeddings_{nullptr};
  std::vector<TransformerBlock> layers_;
  RMSNorm norm_;
  Parameter* output_;
  ModuleHooks* hooks_ = nullptr;

  ActivationCheckpointing ac_;
  bool ac_planned_ = false;  // the plan matches ac_
  BatchShape planned_{};
  RopeTables rope_;
  std::vector<Tensor> residual_;  // residual_[i] = input of block i; residual_[L] = last output
  std::vector<TransformerBlock::Saved> saved_;
  TransformerBlock::Workspace ws_;
  Tensor final_norm_out_, final_rstd_, d_hidden_, d_resid_;
  Tensor classifier_scratch_;  // one chunk of fp32 logits
};

}  // namespace titan::llama3
