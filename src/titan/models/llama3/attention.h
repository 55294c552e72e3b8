// Grouped-query causal self-attention with RoPE: y = wo(sdpa(rope(wq x), rope(wk x), wv x)).
#pragma once
#include "titan/models/llama3/modules.h"

namespace titan::llama3 {

struct RopeTables {
  Tensor cos, sin;  // [seq, head_dim / 2]
};

class Attention {
 public:
  struct Saved {
    Tensor q, k, v;  // after RoPE: [rows, heads * hd], [rows, kv_heads * hd] x2
    Tensor out;      // attention output before wo: [rows, heads * hd]
    Tensor lse;      // [batch, heads, seq]
  };
  // Gradient buffers shared by every block (only one block runs backward at a time).
  struct Workspace {
    Tensor d_out, dq, dk, dv;
  };

  Attention(Parameter* wq, Parameter* wk, Parameter* wv, Parameter* wo, int64_t heads, int64_t kv_heads);
  Saved make_saved(BatchShape s) const;
  Workspace make_workspace(BatchShape s) const;
  void forward(const float* x, float* y, Saved& saved, const RopeTables& rope, BatchShape s) const;
  // dx (overwritten) = d/dx of the three input projections; weight grads accumulated.
  void backward(const float* x, const float* dy, float* dx, const Saved& saved, Workspace& ws,
                const RopeTables& rope, BatchShape s) const;

 private:
  Linear wq_, wk_, wv_, wo_;
  int64_t heads_, kv_heads_, head_dim_;
};

}  // namespace titan::llama3
