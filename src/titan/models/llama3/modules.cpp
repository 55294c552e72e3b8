#include "titan/models/llama3/modules.h"

#include "titan/ops/ops.h"

namespace titan::llama3 {

void Linear::forward(const float* x, float* y, int64_t n) const {
  cpu::linear_forward(x, w_->full.f32(), y, n, in(), out());
}

void Linear::backward(const float* x, const float* dy, float* dx, int64_t n, float dx_beta) const {
  cpu::linear_backward(x, w_->full.f32(), dy, dx, w_->full_grad.f32(), n, in(), out(), dx_beta);
}

void RMSNorm::forward(const float* x, float* y, float* rstd, int64_t n) const {
  cpu::rmsnorm_forward(x, w_->full.f32(), y, rstd, n, dim(), eps_);
}

void RMSNorm::backward(const float* x, const float* rstd, const float* dy, float* dx, int64_t n) const {
  cpu::rmsnorm_backward(x, w_->full.f32(), rstd, dy, dx, w_->full_grad.f32(), n, dim());
}

void Embedding::forward(const int32_t* tokens, float* out, int64_t n) const {
  cpu::embedding_forward(tokens, w_->full.f32(), out, n, w_->global_shape[0], w_->global_shape[1]);
}

void Embedding::backward(const int32_t* tokens, const float* dout, int64_t n) const {
  cpu::embedding_backward(tokens, dout, w_->full_grad.f32(), n, w_->global_shape[1]);
}

}  // namespace titan::llama3
