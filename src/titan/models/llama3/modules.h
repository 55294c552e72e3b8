// The Llama 3 building blocks, each with an explicit forward and backward. Forward saves what
// backward needs in the module's own Saved struct; backward accumulates parameter gradients
// into Parameter::full_grad. Modules know nothing of parallelism: they read Parameter::full.
#pragma once
#include <cstdint>

#include "titan/core/parameter.h"
#include "titan/core/tensor.h"

namespace titan::llama3 {

struct BatchShape {
  int64_t batch = 0, seq = 0;
  int64_t rows() const { return batch * seq; }
  bool operator==(const BatchShape&) const = default;
};

// y = x W^T with W [out, in].
class Linear {
 public:
  explicit Linear(Parameter* w) : w_(w) {}
  int64_t in() const { return w_->global_shape[1]; }
  int64_t out() const { return w_->global_shape[0]; }
  void forward(const float* x, float* y, int64_t n) const;
  // dx = dy W (dx_beta 1 adds to dx); dW += dy^T x.
  void backward(const float* x, const float* dy, float* dx, int64_t n, float dx_beta) const;

 private:
  Parameter* w_;
};

class RMSNorm {
 public:
  RMSNorm(Parameter* w, float eps) : w_(w), eps_(eps) {}
  int64_t dim() const { return w_->global_shape[0]; }
  void forward(const float* x, float* y, float* rstd, int64_t n) const;
  // dx is overwritten; dW accumulated.
  void backward(const float* x, const float* rstd, const float* dy, float* dx, int64_t n) const;

 private:
  Parameter* w_;
  float eps_;
};

class Embedding {
 public:
  explicit Embedding(Parameter* w) : w_(w) {}
  void forward(const int32_t* tokens, float* out, int64_t n) const;
  void backward(const int32_t* tokens, const float* dout, int64_t n) const;

 private:
  Parameter* w_;
};

}  // namespace titan::llama3
