#include "titan/models/llama3/attention.h"

#include "titan/ops/ops.h"

namespace titan::llama3 {

Attention::Attention(Parameter* wq, Parameter* wk, Parameter* wv, Parameter* wo, int64_t heads,
                     int64_t kv_heads)
    : wq_(wq), wk_(wk), wv_(wv), wo_(wo), heads_(heads), kv_heads_(kv_heads),
      head_dim_(wq->global_shape[0] / heads) {}

Attention::Saved Attention::make_saved(BatchShape s) const {
  const int64_t n = s.rows();
  return {Tensor::zeros({n, heads_ * head_dim_}), Tensor::zeros({n, kv_heads_ * head_dim_}),
          Tensor::zeros({n, kv_heads_ * head_dim_}), Tensor::zeros({n, heads_ * head_dim_}),
          Tensor::zeros({s.batch, heads_, s.seq})};
}

Attention::Workspace Attention::make_workspace(BatchShape s) const {
  const int64_t n = s.rows();
  return {Tensor::zeros({n, heads_ * head_dim_}), Tensor::zeros({n, heads_ * head_dim_}),
          Tensor::zeros({n, kv_heads_ * head_dim_}), Tensor::zeros({n, kv_heads_ * head_dim_})};
}

void Attention::forward(const float* x, float* y, Saved& sv, const RopeTables& rope, BatchShape s) const {
  const int64_t n = s.rows();
  wq_.forward(x, sv.q.f32(), n);
  wk_.forward(x, sv.k.f32(), n);
  wv_.forward(x, sv.v.f32(), n);
  cpu::rope_forward(sv.q.f32(), rope.cos.f32(), rope.sin.f32(), s.batch, s.seq, heads_, head_dim_);
  cpu::rope_forward(sv.k.f32(), rope.cos.f32(), rope.sin.f32(), s.batch, s.seq, kv_heads_, head_dim_);
  cpu::attention_forward(sv.q.f32(), sv.k.f32(), sv.v.f32(), sv.out.f32(), sv.lse.f32(),
                         {s.batch, s.seq, heads_, kv_heads_, head_dim_});
  wo_.forward(sv.out.f32(), y, n);
}

void Attention::backward(const float* x, const float* dy, float* dx, const Saved& sv, Workspace& ws,
                         const RopeTables& rope, BatchShape s) const {
  const int64_t n = s.rows();
  wo_.backward(sv.out.f32(), dy, ws.d_out.f32(), n, 0.0f);
  cpu::attention_backward(sv.q.f32(), sv.k.f32(), sv.v.f32(), sv.out.f32(), sv.lse.f32(),
                          ws.d_out.f32(), ws.dq.f32(), ws.dk.f32(), ws.dv.f32(),
                          {s.batch, s.seq, heads_, kv_heads_, head_dim_});
  cpu::rope_backward(ws.dq.f32(), rope.cos.f32(), rope.sin.f32(), s.batch, s.seq, heads_, head_dim_);
  cpu::rope_backward(ws.dk.f32(), rope.cos.f32(), rope.sin.f32(), s.batch, s.seq, kv_heads_, head_dim_);
  wq_.backward(x, ws.dq.f32(), dx, n, 0.0f);
  wk_.backward(x, ws.dk.f32(), dx, n, 1.0f);
  wv_.backward(x, ws.dv.f32(), dx, n, 1.0f);
}

}  // namespace titan::llama3
