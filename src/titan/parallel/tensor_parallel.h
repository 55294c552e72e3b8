// Tensor parallel applied to the model from outside, as torchtitan's apply_tp does: column-wise
// wq, wk, wv, w1, w3 and the classifier, row-wise wo and w2, the embedding sliced over the
// vocabulary (the layout table gives each tensor its style and this rank its slice), sequence
// parallel between them (the residual stream and the norms hold 1/degree of the rows), and
// loss parallel (cross-entropy over the vocabulary's slices, the logits never gathered). This
// class is the collectives the model's hooks ask for, over one ProcessGroup: the TP group of
// neighbouring ranks, the innermost dimension of the [replicate, shard, tp] mesh.
#pragma once
#include <deque>
#include <vector>

#include "titan/core/parameter.h"
#include "titan/core/tensor_parallel_hooks.h"
#include "titan/models/llama3/activation_plan.h"
#include "titan/models/llama3/layout.h"
#include "titan/parallel/fsdp.h"
#include "titan/parallel/process_group.h"

namespace titan::parallel {

class TensorParallel final : public TensorParallelHooks {
 public:
  // `layout`: this rank's sliced layout (its replicated tensors' gradients are summed here).
  TensorParallel(ProcessGroup& group, const llama3::ModelLayout& layout);
  int degree() const override { return group_.size(); }
  int rank() const { return group_.rank(); }
  ProcessGroup& group() { return group_; }

  // On the CPU backend's float32 buffers.
  void gather_rows(const void* shard, void* whole, int64_t rows, int64_t width) override;
  void reduce_scatter_rows(const void* whole, void* shard, int64_t rows, int64_t width) override;
  void gather_stats(const double* mine, double* all, int64_t count) override;
  void gather_logits(const void* mine, void* all, int64_t count) override;

  // After a step's micro-batches: the replicated tensors (the norms) got each rank's rows'
  // share of their gradient; sums those shards over the group (one all-reduce per step).
  void reduce_replicated_gradients(std::deque<Parameter>& params);
  // This rank's squared gradient norm over the group: the sliced tensors' own and the
  // replicated ones' once (rank 0's), summed over the group. (Then over the FSDP shards.)
  double grad_sq(const std::deque<Parameter>& params);
  // Bytes moved since the last call (counted as a ring moves them, as CommVolume).
  CommVolume take_volume();
  // Bytes per rank per step from the schedule: every all-gather or reduce-scatter of the
  // residual stream moves (degree - 1) x rows/degree x dim x 4; a micro-batch makes 8 L + 4 of
  // them plus one per recomputed region (4 for a fully recomputed block, 3 for selective_op),
  // and loss parallel's statistics (degree - 1) x rows x 16 (without loss parallel the logits:
  // (degree - 1) x rows x vocab/degree x 4); per step the replicated gradients' all-reduce adds
  // 2 (degree - 1)/degree x 4 x their elements / fsdp_shards. `activation_bytes`: 4 for the CPU's
  // float32 activations and logits, 2 for the GPU's bfloat16 (the statistics and the replicated
  // gradients keep their 8 and 4 bytes).
  static double analytic_volume(const llama3::ModelArgs& args, llama3::BatchShape s,
                                const llama3::ActivationCheckpointing& ac, int degree, int64_t micro_batches,
                                int fsdp_shards, bool loss_parallel, int activation_bytes = 4);

 private:
  ProcessGroup& group_;
  std::vector<bool> replicated_;  // by layout position
  CommVolume volume_;
};

// UserError naming training.tensor_parallel_degree when `degree` does not divide the heads, KV
// heads, feed-forward width, vocabulary or the micro-batch's rows, or the ranks.
void check_tensor_parallel(int degree, int world, const llama3::ModelArgs& args, llama3::BatchShape s,
                           const std::string& origin);

}  // namespace titan::parallel
