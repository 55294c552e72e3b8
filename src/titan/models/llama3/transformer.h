// The Llama 3 model on the host: its parameters (in the layout table's order, as shards of
// `rank` in `world`) and the one model (model.h) running over the CPU backend. Init,
// checkpoints, FSDP on the CPU and the device mirrors all start from these parameters.
#pragma once
#include <deque>
#include <string>
#include <vector>

#include "titan/core/module_hooks.h"
#include "titan/core/trace.h"
#include "titan/core/weight_store.h"
#include "titan/models/llama3/activation_plan.h"
#include "titan/models/llama3/layout.h"
#include "titan/models/llama3/model.h"
#include "titan/models/llama3/model_args.h"
#include "titan/ops/cpu/cpu_backend.h"
#include "titan/ops/ops.h"

namespace titan::llama3 {

struct MemoryReport {
  int64_t parameters = 0;              // elements, all parameters
  int64_t embedding_parameters = 0;    // elements of tok_embeddings
  size_t parameter_bytes = 0, gradient_bytes = 0, optimizer_bytes = 0, activation_bytes = 0;
};

class Transformer {
 public:
  // Parameters are created as shards of `rank` in `world` (world 1: whole parameters), of the
  // slices tensor-parallel rank `tp` holds (the whole tensors at degree 1).
  explicit Transformer(const ModelArgs& args, int rank = 0, int world = 1, TensorParallelRank tp = {});
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
  void set_hooks(ModuleHooks* hooks) { model_.set_hooks(hooks); }

  // Layout-invariant init (REFERENCE.md's torchtitan rules) of this rank's shards.
  void init_weights(uint64_t seed);
  void zero_grad();

  // Allocates activations for this batch shape (kept until a different shape comes).
  void plan(BatchShape s) { model_.plan(s); }
  // Takes effect at the next plan().
  void set_activation_checkpointing(const ActivationCheckpointing& ac) { model_.set_activation_checkpointing(ac); }
  // Forward, fused loss, backward. Parameter grads accumulate the gradient of
  // loss_sum * grad_scale (grad_scale = 1 / counted tokens gives the mean loss).
  cpu::ClassifierResult forward_backward(const int32_t* tokens, const int32_t* labels, BatchShape s, float grad_scale,
                                         int32_t ignore_index = -100, Tracer* tracer = nullptr) {
    return model_.forward_backward(tokens, labels, s, grad_scale, ignore_index, tracer);
  }
  // Forward and loss only.
  cpu::ClassifierResult forward_loss(const int32_t* tokens, const int32_t* labels, BatchShape s,
                                     int32_t ignore_index = -100) {
    return model_.forward_loss(tokens, labels, s, ignore_index);
  }
  // Forward to logits [rows, vocab] (tests and generation).
  void forward_logits(const int32_t* tokens, BatchShape s, float* logits) { model_.forward_logits(tokens, s, logits); }

  MemoryReport memory() const;
  // The model itself (generation's KV-cache decoding, executors).
  Model& model() { return model_; }

 private:
  ModelArgs args_;
  ModelLayout layout_;
  std::deque<Parameter> params_;  // deque: the weight store indexes it, and elements never move
  cpu::CpuBackend backend_;
  ParameterWeights weights_{params_};
  Model model_;
};

}  // namespace titan::llama3
