#include "titan/models/llama3/model.h"

#include <algorithm>
#include <string>
#include <vector>

#include "titan/core/error.h"

namespace titan::llama3 {

Model::Model(const ModelArgs& args, Backend& backend, WeightStore& weights)
    : args_(args), layout_((args.validate("model"), args)), backend_(backend), weights_(weights) {
  for (int64_t l = 0; l < args.n_layers; ++l) {
    auto b = [&](Role r) { return layout_.block_index(l, r); };
    blocks_.push_back({b(Role::wq), b(Role::wk), b(Role::wv), b(Role::wo), b(Role::w1), b(Role::w2), b(Role::w3),
                       b(Role::attention_norm), b(Role::ffn_norm)});
  }
  embedding_ = layout_.root_index(Role::tok_embeddings);
  norm_ = layout_.root_index(Role::norm);
  output_ = layout_.root_index(Role::output);
}

void Model::set_activation_checkpointing(const ActivationCheckpointing& ac) {
  TITAN_CHECK(ac.every >= 1, "activation checkpointing every ", ac.every);
  ac_ = ac;
  ac_planned_ = false;
}

void Model::plan(BatchShape s) {
  if (s == plan_.shape && ac_planned_) return;
  buffers_.clear();  // the old plan's memory goes back before the new one is taken
  plan_ = plan_activations(args_, s, ac_);
  for (const auto& b : plan_.buffers)
    buffers_.push_back(backend_.allocate(static_cast<size_t>(b.elements) *
                                         (b.f32 ? sizeof(float) : dtype_size(backend_.compute_dtype()))));
  const int64_t half = args_.head_dim() / 2;
  std::vector<float> cos(static_cast<size_t>(s.seq * half)), sin(cos.size());
  cpu::rope_tables(cos.data(), sin.data(), s.seq, args_.head_dim(), args_.rope_theta);
  backend_.upload_f32(f32(plan_.rope_cos), cos.data(), s.seq * half);
  backend_.upload_f32(f32(plan_.rope_sin), sin.data(), s.seq * half);
  backend_.prepare({s, args_.dim, args_.n_heads, args_.head_dim(), args_.vocab_size});
  ac_planned_ = true;
}

void Model::linear(const void* x, size_t weight, void* y, int64_t n) {
  const Shape& shape = layout_[weight].shape;
  backend_.linear_forward(x, w(weight), y, n, shape[1], shape[0]);
}

void Model::linear_backward(const void* x, size_t weight, const void* dy, void* dx, int64_t n, float dx_beta) {
  const Shape& shape = layout_[weight].shape;
  backend_.linear_backward(x, w(weight), dy, dx, dw(weight), n, shape[1], shape[0], dx_beta);
}

void Model::block_forward(int64_t layer, BatchShape s) {
  const BlockWeights& bw = blocks_[static_cast<size_t>(layer)];
  const BlockBuffers& a = plan_.blocks[static_cast<size_t>(layer)];
  const int64_t n = s.rows(), d = args_.dim, hd = args_.head_dim();
  const void* x = act(plan_.residual[static_cast<size_t>(layer)]);
  void* out = act(plan_.residual[static_cast<size_t>(layer) + 1]);
  backend_.rmsnorm_forward(x, w(bw.attention_norm), act(a.xn), f32(a.rstd1), n, d, args_.norm_eps);
  linear(act(a.xn), bw.wq, act(a.q), n);
  linear(act(a.xn), bw.wk, act(a.k), n);
  linear(act(a.xn), bw.wv, act(a.v), n);
  backend_.rope(act(a.q), f32(plan_.rope_cos), f32(plan_.rope_sin), s.batch, s.seq, args_.n_heads, hd, false);
  backend_.rope(act(a.k), f32(plan_.rope_cos), f32(plan_.rope_sin), s.batch, s.seq, args_.n_kv_heads, hd, false);
  backend_.attention_forward(act(a.q), act(a.k), act(a.v), act(a.att), f32(a.lse),
                             {s.batch, s.seq, args_.n_heads, args_.n_kv_heads, hd});
  linear(act(a.att), bw.wo, act(a.proj), n);
  backend_.add_rmsnorm_forward(x, act(a.proj), act(a.h), w(bw.ffn_norm), act(a.hn), f32(a.rstd2), n, d, args_.norm_eps);
  linear(act(a.hn), bw.w1, act(a.a1), n);
  linear(act(a.hn), bw.w3, act(a.a3), n);
  backend_.swiglu_forward(act(a.a1), act(a.a3), act(a.g), n * args_.ffn_hidden());
  linear(act(a.g), bw.w2, out, n);
  backend_.add(act(a.h), out, out, n * d);
}

void Model::block_recompute_elementwise(int64_t layer, BatchShape s) {
  const BlockWeights& bw = blocks_[static_cast<size_t>(layer)];
  const BlockBuffers& a = plan_.blocks[static_cast<size_t>(layer)];
  const int64_t n = s.rows(), d = args_.dim;
  const void* x = act(plan_.residual[static_cast<size_t>(layer)]);
  backend_.rmsnorm_forward(x, w(bw.attention_norm), act(a.xn), f32(a.rstd1), n, d, args_.norm_eps);
  backend_.add_rmsnorm_forward(x, act(a.proj), act(a.h), w(bw.ffn_norm), act(a.hn), f32(a.rstd2), n, d, args_.norm_eps);
  backend_.swiglu_forward(act(a.a1), act(a.a3), act(a.g), n * args_.ffn_hidden());
}

void Model::block_backward(int64_t layer, BatchShape s) {
  const BlockWeights& bw = blocks_[static_cast<size_t>(layer)];
  const BlockBuffers& a = plan_.blocks[static_cast<size_t>(layer)];
  const BackwardBuffers& g = plan_.backward;
  const int64_t n = s.rows(), d = args_.dim, hd = args_.head_dim();
  void* dr = act(plan_.d_resid);
  // d(out) reaches h through the residual; add the path through the feed-forward.
  linear_backward(act(a.g), bw.w2, dr, act(g.dg), n, 0.0f);
  backend_.swiglu_backward(act(a.a1), act(a.a3), act(g.dg), act(g.da1), act(g.da3), n * args_.ffn_hidden());
  linear_backward(act(a.hn), bw.w1, act(g.da1), act(g.dxn), n, 0.0f);
  linear_backward(act(a.hn), bw.w3, act(g.da3), act(g.dxn), n, 1.0f);
  backend_.rmsnorm_backward(act(a.h), w(bw.ffn_norm), f32(a.rstd2), act(g.dxn), dr, true, dw(bw.ffn_norm), n, d);
  // Now dr = d(h), which reaches x through the residual; add the path through attention.
  linear_backward(act(a.att), bw.wo, dr, act(g.d_att), n, 0.0f);
  backend_.attention_backward(act(a.q), act(a.k), act(a.v), act(a.att), f32(a.lse), act(g.d_att), act(g.dq), act(g.dk),
                              act(g.dv), {s.batch, s.seq, args_.n_heads, args_.n_kv_heads, hd});
  backend_.rope(act(g.dq), f32(plan_.rope_cos), f32(plan_.rope_sin), s.batch, s.seq, args_.n_heads, hd, true);
  backend_.rope(act(g.dk), f32(plan_.rope_cos), f32(plan_.rope_sin), s.batch, s.seq, args_.n_kv_heads, hd, true);
  linear_backward(act(a.xn), bw.wq, act(g.dq), act(g.dxn), n, 0.0f);
  linear_backward(act(a.xn), bw.wk, act(g.dk), act(g.dxn), n, 1.0f);
  linear_backward(act(a.xn), bw.wv, act(g.dv), act(g.dxn), n, 1.0f);
  backend_.rmsnorm_backward(act(plan_.residual[static_cast<size_t>(layer)]), w(bw.attention_norm), f32(a.rstd1),
                            act(g.dxn), dr, true, dw(bw.attention_norm), n, d);
}

void Model::load_batch(const int32_t* tokens, const int32_t* labels, BatchShape s, bool backward_follows) {
  plan(s);
  backend_.load_batch(tokens, labels, s.rows(), args_.vocab_size, backward_follows);
}

void Model::forward_hidden(BatchShape s, bool backward_follows, Tracer* tracer) {
  const int64_t n = s.rows();
  hook_before_forward(0);
  {
    Tracer::Span span(tracer, "forward embedding");
    backend_.embedding_forward(w(embedding_), act(plan_.residual[0]), n, args_.dim);
  }
  for (int64_t i = 0; i < args_.n_layers; ++i) {
    const int unit = static_cast<int>(i) + 1;
    hook_before_forward(unit);
    Tracer::Span span(tracer, "forward layers." + std::to_string(i));
    block_forward(i, s);
    hook_after_forward(unit, backward_follows);
  }
  backend_.rmsnorm_forward(act(plan_.residual.back()), w(norm_), act(plan_.final_out), f32(plan_.final_rstd), n,
                           args_.dim, args_.norm_eps);
}

void Model::enqueue_forward_backward(BatchShape s, float grad_scale, int32_t ignore_index, Tracer* tracer) {
  TITAN_CHECK(s == plan_.shape && ac_planned_, "a pass of ", s.batch, " x ", s.seq, " without its plan");
  forward_hidden(s, true, tracer);
  const int64_t n = s.rows();
  hook_after_forward(0, true);
  hook_before_backward(0);
  {
    Tracer::Span span(tracer, "loss (output projection + cross-entropy, forward and backward)");
    backend_.classifier(act(plan_.final_out), w(output_), act(plan_.d_hidden), dw(output_), n, args_.dim,
                        args_.vocab_size, ignore_index, grad_scale);
    backend_.rmsnorm_backward(act(plan_.residual.back()), w(norm_), f32(plan_.final_rstd), act(plan_.d_hidden),
                              act(plan_.d_resid), false, dw(norm_), n, args_.dim);
  }
  for (int64_t i = args_.n_layers; i-- > 0;) {
    const int unit = static_cast<int>(i) + 1;
    hook_before_backward(unit);
    Tracer::Span span(tracer, "backward layers." + std::to_string(i));
    if (plan_.ac.recomputes_block(i)) {
      // Its output is rewritten with the same values: the block above has finished its backward.
      block_forward(i, s);
    } else if (plan_.ac.recomputes_elementwise()) {
      block_recompute_elementwise(i, s);
    }
    block_backward(i, s);
    hook_after_backward(unit);
  }
  {
    Tracer::Span span(tracer, "backward embedding");
    backend_.embedding_backward(act(plan_.d_resid), dw(embedding_), n, args_.dim);
  }
  hook_after_backward(0);
}

namespace {
int64_t counted(const int32_t* labels, int64_t n, int32_t ignore_index) {
  return std::count_if(labels, labels + n, [&](int32_t l) { return l != ignore_index; });
}
}  // namespace

cpu::ClassifierResult Model::forward_backward(const int32_t* tokens, const int32_t* labels, BatchShape s,
                                              float grad_scale, int32_t ignore_index, Tracer* tracer) {
  load_batch(tokens, labels, s, true);
  enqueue_forward_backward(s, grad_scale, ignore_index, tracer);
  return {backend_.loss_sum(), counted(labels, s.rows(), ignore_index)};
}

cpu::ClassifierResult Model::forward_loss(const int32_t* tokens, const int32_t* labels, BatchShape s,
                                          int32_t ignore_index) {
  load_batch(tokens, labels, s, false);
  forward_hidden(s, false, nullptr);
  backend_.classifier(act(plan_.final_out), w(output_), nullptr, nullptr, s.rows(), args_.dim, args_.vocab_size,
                      ignore_index, 0.0f);
  const double loss_sum = backend_.loss_sum();
  hook_after_forward(0, false);
  return {loss_sum, counted(labels, s.rows(), ignore_index)};
}

void Model::forward_logits(const int32_t* tokens, BatchShape s, float* logits) {
  load_batch(tokens, nullptr, s, false);
  forward_hidden(s, false, nullptr);
  backend_.logits(act(plan_.final_out), w(output_), logits, s.rows(), args_.dim, args_.vocab_size);
  hook_after_forward(0, false);
}

}  // namespace titan::llama3
