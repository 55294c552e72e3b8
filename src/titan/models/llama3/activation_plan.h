// The one activation plan (llm.c's fill_in_activation_sizes): every buffer a training pass of
// the Llama 3 model needs for a batch shape, and which block keeps which. Activation
// checkpointing is a policy of this plan: blocks that recompute share buffers. Both backends
// allocate from it and `titan estimate` sums it, so the estimate is the allocation.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "titan/models/llama3/model_args.h"
#include "titan/ops/backend.h"

namespace titan::llama3 {

using titan::BatchShape;

// Activation checkpointing (torchtitan's [activation_checkpoint]): which activations a block
// keeps from forward to backward, and which it recomputes in backward. Recomputation runs the
// same deterministic kernels on the same inputs, so losses are bit-identical.
struct ActivationCheckpointing {
  enum class Mode { none, full, selective_layer, selective_op };
  Mode mode = Mode::none;
  int64_t every = 1;  // selective_layer: blocks whose 1-based index is a multiple of this
  // Whether block i (0-based) keeps only its input and recomputes everything else.
  bool recomputes_block(int64_t i) const {
    return mode == Mode::full || (mode == Mode::selective_layer && (i + 1) % every == 0);
  }
  // selective_op, torchtitan's rule: the outputs of attention and of every odd-numbered matmul
  // of the block stay (wq, wv, w1; w2's is the residual stream), those of every second matmul
  // (wk, wo, w3) and of the elementwise ops are recomputed in backward.
  bool recomputes_selected_ops() const { return mode == Mode::selective_op; }
};

struct PlannedBuffer {
  std::string name;
  int64_t elements = 0;
  bool f32 = false;  // else the backend's compute dtype
};

// Indices into ActivationPlan::buffers.
struct BlockBuffers {
  int xn, rstd1;        // attention_norm(x) and its 1/rms
  int q, k, v, att, lse;  // after RoPE; attention output before wo; log-sum-exp
  int proj;             // wo's output before the residual add
  int h, hn, rstd2;     // x + proj; ffn_norm(h)
  int a1, a3, g;        // w1 hn, w3 hn, silu(a1) * a3
};
struct BackwardBuffers {  // one set, shared by every block's backward
  int dxn, d_att, dq, dk, dv, dg, da1, da3;
};

struct ActivationPlan {
  BatchShape shape;
  ActivationCheckpointing ac;
  std::vector<PlannedBuffer> buffers;
  std::vector<int> residual;  // residual[i] = input of block i; residual[L] = the last output
  std::vector<BlockBuffers> blocks;
  BackwardBuffers backward{};
  int final_out = 0, final_rstd = 0, d_hidden = 0, d_resid = 0, rope_cos = 0, rope_sin = 0;
  // Tensor parallel (degree > 1; else -1). Between blocks the residual stream, the norms' inputs
  // and statistics hold this rank's rows only (sequence parallel); `norm_shard` is a norm's
  // output (or input gradient) on those rows before its all-gather (after its reduce-scatter),
  // `partial` a row-wise linear's partial sums before their reduce-scatter, `d_full` the
  // residual gradient gathered over all rows.
  int tp_degree = 1;
  int norm_shard = -1, partial = -1, d_full = -1;
  // Bytes of the buffers with activations of `compute_bytes` per element.
  double bytes(size_t compute_bytes) const;
};

// `tp`: the tensor-parallel degree; heads, KV heads and the feed-forward width are this rank's
// share, and the rows between blocks 1/tp of the batch's (which tp must divide).
ActivationPlan plan_activations(const ModelArgs& args, BatchShape s, const ActivationCheckpointing& ac, int tp = 1);

}  // namespace titan::llama3
