// SwiGLU feed-forward: y = w2(silu(w1 x) * w3 x).
#pragma once
#include "titan/models/llama3/modules.h"

namespace titan::llama3 {

class FeedForward {
 public:
  struct Saved {
    Tensor a1, a3, g;  // w1 x, w3 x, silu(a1) * a3: [rows, hidden] each
  };
  struct Workspace {
    Tensor dg, da1, da3;
  };

  FeedForward(Parameter* w1, Parameter* w2, Parameter* w3) : w1_(w1), w2_(w2), w3_(w3) {}
  int64_t hidden() const { return w1_.out(); }
  Saved make_saved(BatchShape s) const;
  Workspace make_workspace(BatchShape s) const;
  void forward(const float* x, float* y, Saved& saved, int64_t n) const;
  // dx overwritten; weight grads accumulated.
  void backward(const float* x, const float* dy, float* dx, const Saved& saved, Workspace& ws,
                int64_t n) const;

 private:
  Linear w1_, w2_, w3_;
};

}  // namespace titan::llama3
