#include "titan/models/llama3/feed_forward.h"

#include "titan/ops/ops.h"

namespace titan::llama3 {

FeedForward::Saved FeedForward::make_saved(BatchShape s) const {
  const int64_t n = s.rows(), h = hidden();
  return {Tensor::zeros({n, h}), Tensor::zeros({n, h}), Tensor::zeros({n, h})};
}

FeedForward::Workspace FeedForward::make_workspace(BatchShape s) const {
  const int64_t n = s.rows(), h = hidden();
  return {Tensor::zeros({n, h}), Tensor::zeros({n, h}), Tensor::zeros({n, h})};
}

void FeedForward::forward(const float* x, float* y, Saved& sv, int64_t n) const {
  w1_.forward(x, sv.a1.f32(), n);
  w3_.forward(x, sv.a3.f32(), n);
  cpu::swiglu_forward(sv.a1.f32(), sv.a3.f32(), sv.g.f32(), n * hidden());
  w2_.forward(sv.g.f32(), y, n);
}

void FeedForward::backward(const float* x, const float* dy, float* dx, const Saved& sv,
                           Workspace& ws, int64_t n) const {
  w2_.backward(sv.g.f32(), dy, ws.dg.f32(), n, 0.0f);
  cpu::swiglu_backward(sv.a1.f32(), sv.a3.f32(), ws.dg.f32(), ws.da1.f32(), ws.da3.f32(), n * hidden());
  w1_.backward(x, ws.da1.f32(), dx, n, 0.0f);
  w3_.backward(x, ws.da3.f32(), dx, n, 1.0f);
}

}  // namespace titan::llama3
