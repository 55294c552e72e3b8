#include "titan/models/llama3/transformer.h"

#include <cstring>
#include <optional>
#include <set>

#include "titan/models/llama3/init.h"

namespace titan::llama3 {

TransformerBlock::Saved TransformerBlock::make_saved(BatchShape s, int64_t dim) const {
  const int64_t n = s.rows();
  return {Tensor::zeros({n, dim}), Tensor::zeros({n}),        Tensor::zeros({n, dim}), Tensor::zeros({n, dim}),
          Tensor::zeros({n}),      Tensor() /* proj */,        attention_.make_saved(s), feed_forward_.make_saved(s)};
}

TransformerBlock::Workspace TransformerBlock::make_workspace(BatchShape s, int64_t dim) const {
  const int64_t n = s.rows();
  return {Tensor::zeros({n, dim}), Tensor::zeros({n, dim}), attention_.make_workspace(s),
          feed_forward_.make_workspace(s)};
}

void TransformerBlock::forward(const float* x, float* out, Saved& sv, const RopeTables& rope,
                               BatchShape s) const {
  const int64_t n = s.rows(), d = attention_norm_.dim();
  attention_norm_.forward(x, sv.xn.f32(), sv.rstd1.f32(), n);
  float* h = sv.h.f32();
  if (sv.proj.defined()) {  // keep wo's output, so h can be recomputed without a matmul
    attention_.forward(sv.xn.f32(), sv.proj.f32(), sv.attn, rope, s);
    std::memcpy(h, sv.proj.f32(), static_cast<size_t>(n * d) * sizeof(float));
  } else {
    attention_.forward(sv.xn.f32(), h, sv.attn, rope, s);
  }
  cpu::add_inplace(h, x, n * d);
  ffn_norm_.forward(h, sv.hn.f32(), sv.rstd2.f32(), n);
  feed_forward_.forward(sv.hn.f32(), out, sv.ffn, n);
  cpu::add_inplace(out, h, n * d);
}

void TransformerBlock::recompute_elementwise(const float* x, Saved& sv, BatchShape s) const {
  const int64_t n = s.rows(), d = attention_norm_.dim();
  attention_norm_.forward(x, sv.xn.f32(), sv.rstd1.f32(), n);
  std::memcpy(sv.h.f32(), sv.proj.f32(), static_cast<size_t>(n * d) * sizeof(float));
  cpu::add_inplace(sv.h.f32(), x, n * d);
  ffn_norm_.forward(sv.h.f32(), sv.hn.f32(), sv.rstd2.f32(), n);
  cpu::swiglu_forward(sv.ffn.a1.f32(), sv.ffn.a3.f32(), sv.ffn.g.f32(), n * feed_forward_.hidden());
}

void TransformerBlock::backward(const float* x, float* d_resid, const Saved& sv, Workspace& ws,
                                const RopeTables& rope, BatchShape s) const {
  const int64_t n = s.rows(), d = attention_norm_.dim();
  // d_resid = d(out) = d(h) through the residual; add the path through the feed-forward.
  feed_forward_.backward(sv.hn.f32(), d_resid, ws.dxn.f32(), sv.ffn, ws.ffn, n);
  ffn_norm_.backward(sv.h.f32(), sv.rstd2.f32(), ws.dxn.f32(), ws.dnorm.f32(), n);
  cpu::add_inplace(d_resid, ws.dnorm.f32(), n * d);
  // Now d_resid = d(h) = d(x) through the residual; add the path through attention.
  attention_.backward(sv.xn.f32(), d_resid, ws.dxn.f32(), sv.attn, ws.attn, rope, s);
  attention_norm_.backward(x, sv.rstd1.f32(), ws.dxn.f32(), ws.dnorm.f32(), n);
  cpu::add_inplace(d_resid, ws.dnorm.f32(), n * d);
}

Transformer::Transformer(const ModelArgs& args, int rank, int world)
    : args_(args), layout_((args.validate("model"), args)), norm_(nullptr, args.norm_eps), output_(nullptr) {
  for (const auto& t : layout_.tensors()) params_.push_back(make_parameter(t.name, t.shape, rank, world));
  auto p = [&](size_t i) { return &params_[i]; };
  tok_embeddings_ = Embedding(p(layout_.root_index(Role::tok_embeddings)));
  for (int64_t l = 0; l < args.n_layers; ++l) {
    auto b = [&](Role r) { return p(layout_.block_index(l, r)); };
    layers_.emplace_back(Attention(b(Role::wq), b(Role::wk), b(Role::wv), b(Role::wo), args.n_heads, args.n_kv_heads),
                         FeedForward(b(Role::w1), b(Role::w2), b(Role::w3)), RMSNorm(b(Role::attention_norm), args.norm_eps),
                         RMSNorm(b(Role::ffn_norm), args.norm_eps));
  }
  norm_ = RMSNorm(p(layout_.root_index(Role::norm)), args.norm_eps);
  output_ = p(layout_.root_index(Role::output));
}

Parameter& Transformer::parameter(const std::string& name) {
  for (auto& p : params_)
    if (p.name == name) return p;
  throw InternalError("no parameter named " + name);
}

std::vector<std::vector<Parameter*>> Transformer::units() {
  std::vector<std::vector<Parameter*>> out(static_cast<size_t>(layout_.units()));
  for (size_t i = 0; i < params_.size(); ++i) out[static_cast<size_t>(layout_[i].unit)].push_back(&params_[i]);
  return out;
}

void Transformer::init_weights(uint64_t seed) {
  for (size_t i = 0; i < params_.size(); ++i) init_parameter(params_[i], layout_[i].init, seed);
}

void Transformer::zero_grad() {
  for (auto& p : params_) {
    p.grad.zero_();
    if (!p.full_grad.shares_storage(p.grad) && p.full_grad.defined()) p.full_grad.zero_();
  }
}

void Transformer::set_activation_checkpointing(const ActivationCheckpointing& ac) {
  TITAN_CHECK(ac.every >= 1, "activation checkpointing every ", ac.every);
  ac_ = ac;
  ac_planned_ = false;
}

void Transformer::plan(BatchShape s) {
  if (s == planned_ && ac_planned_) return;
  TITAN_CHECK(s.batch > 0 && s.seq > 0, "empty batch shape");
  const int64_t n = s.rows(), d = args_.dim, half = args_.head_dim() / 2;
  rope_ = {Tensor::zeros({s.seq, half}), Tensor::zeros({s.seq, half})};
  cpu::rope_tables(rope_.cos.f32(), rope_.sin.f32(), s.seq, args_.head_dim(), args_.rope_theta);
  residual_.clear();
  saved_.clear();
  for (int64_t i = 0; i <= args_.n_layers; ++i) residual_.push_back(Tensor::zeros({n, d}));
  // Blocks that recompute everything share one set of buffers; in selective_op mode all blocks
  // share the elementwise tensors and keep their own matmul outputs.
  std::optional<TransformerBlock::Saved> shared;
  for (size_t i = 0; i < layers_.size(); ++i) {
    if (ac_.recomputes_block(static_cast<int64_t>(i))) {
      if (!shared) shared = layers_[i].make_saved(s, d);
      saved_.push_back(*shared);
      continue;
    }
    saved_.push_back(layers_[i].make_saved(s, d));
    if (ac_.mode == ActivationCheckpointing::Mode::selective_op) {
      if (!shared) {  // only the elementwise tensors are shared
        shared.emplace();
        shared->xn = Tensor::zeros({n, d});
        shared->h = Tensor::zeros({n, d});
        shared->hn = Tensor::zeros({n, d});
        shared->ffn.g = Tensor::zeros({n, args_.ffn_hidden()});
      }
      auto& sv = saved_.back();
      sv.xn = shared->xn;
      sv.h = shared->h;
      sv.hn = shared->hn;
      sv.ffn.g = shared->ffn.g;
      sv.proj = Tensor::zeros({n, d});
    }
  }
  ws_ = layers_.front().make_workspace(s, d);
  final_norm_out_ = Tensor::zeros({n, d});
  final_rstd_ = Tensor::zeros({n});
  d_hidden_ = Tensor::zeros({n, d});
  d_resid_ = Tensor::zeros({n, d});
  classifier_scratch_ = Tensor::zeros({cpu::classifier_scratch_floats(n, args_.vocab_size)});
  planned_ = s;
  ac_planned_ = true;
}

void Transformer::forward_hidden(const int32_t* tokens, BatchShape s, bool backward_follows, Tracer* tracer) {
  plan(s);
  const int64_t n = s.rows();
  hook_before_forward(0);
  {
    Tracer::Span span(tracer, "forward embedding");
    tok_embeddings_.forward(tokens, residual_[0].f32(), n);
  }
  for (size_t i = 0; i < layers_.size(); ++i) {
    const int unit = static_cast<int>(i) + 1;
    hook_before_forward(unit);
    Tracer::Span span(tracer, "forward layers." + std::to_string(i));
    layers_[i].forward(residual_[i].f32(), residual_[i + 1].f32(), saved_[i], rope_, s);
    hook_after_forward(unit, backward_follows);
  }
  norm_.forward(residual_.back().f32(), final_norm_out_.f32(), final_rstd_.f32(), n);
}

cpu::ClassifierResult Transformer::forward_backward(const int32_t* tokens, const int32_t* labels,
                                                    BatchShape s, float grad_scale, int32_t ignore_index,
                                                    Tracer* tracer) {
  forward_hidden(tokens, s, true, tracer);
  const int64_t n = s.rows();
  cpu::ClassifierResult result;
  hook_after_forward(0, true);
  hook_before_backward(0);
  {
    Tracer::Span span(tracer, "loss (output projection + cross-entropy, forward and backward)");
    result = cpu::classifier_forward_backward(final_norm_out_.f32(), output_->full.f32(), labels, n, args_.dim,
                                              args_.vocab_size, ignore_index, grad_scale, d_hidden_.f32(),
                                              output_->full_grad.f32(), classifier_scratch_.f32());
    norm_.backward(residual_.back().f32(), final_rstd_.f32(), d_hidden_.f32(), d_resid_.f32(), n);
  }
  for (size_t i = layers_.size(); i-- > 0;) {
    const int unit = static_cast<int>(i) + 1;
    hook_before_backward(unit);
    Tracer::Span span(tracer, "backward layers." + std::to_string(i));
    if (ac_.recomputes_block(static_cast<int64_t>(i))) {
      // Its output is rewritten with the same values: the block above has finished its backward.
      layers_[i].forward(residual_[i].f32(), residual_[i + 1].f32(), saved_[i], rope_, s);
    } else if (ac_.mode == ActivationCheckpointing::Mode::selective_op) {
      layers_[i].recompute_elementwise(residual_[i].f32(), saved_[i], s);
    }
    layers_[i].backward(residual_[i].f32(), d_resid_.f32(), saved_[i], ws_, rope_, s);
    hook_after_backward(unit);
  }
  {
    Tracer::Span span(tracer, "backward embedding");
    tok_embeddings_.backward(tokens, d_resid_.f32(), n);
  }
  hook_after_backward(0);
  return result;
}

cpu::ClassifierResult Transformer::forward_loss(const int32_t* tokens, const int32_t* labels,
                                                BatchShape s, int32_t ignore_index) {
  forward_hidden(tokens, s, false);
  const auto result = cpu::classifier_forward_backward(final_norm_out_.f32(), output_->full.f32(), labels, s.rows(),
                                                       args_.dim, args_.vocab_size, ignore_index, 0.0f, nullptr,
                                                       nullptr, classifier_scratch_.f32());
  hook_after_forward(0, false);
  return result;
}

void Transformer::forward_logits(const int32_t* tokens, BatchShape s, float* logits) {
  forward_hidden(tokens, s, false);
  cpu::linear_forward(final_norm_out_.f32(), output_->full.f32(), logits, s.rows(), args_.dim,
                      args_.vocab_size);
  hook_after_forward(0, false);
}

MemoryReport Transformer::memory() const {
  MemoryReport r;
  for (const auto& p : params_) {
    r.parameters += p.numel();
    r.parameter_bytes += p.master.bytes();
    r.gradient_bytes += p.grad.bytes();
    r.optimizer_bytes += p.exp_avg.bytes() + p.exp_avg_sq.bytes();
  }
  r.embedding_parameters = params_.front().numel();
  std::set<const void*> counted;  // buffers shared between blocks count once
  auto add = [&](const Tensor& t) {
    if (t.defined() && counted.insert(t.storage_id()).second) r.activation_bytes += t.bytes();
  };
  for (const auto& t : residual_) add(t);
  for (const auto& sv : saved_) {
    for (const Tensor* t : {&sv.xn, &sv.rstd1, &sv.h, &sv.hn, &sv.rstd2, &sv.proj, &sv.attn.q, &sv.attn.k,
                            &sv.attn.v, &sv.attn.out, &sv.attn.lse, &sv.ffn.a1, &sv.ffn.a3, &sv.ffn.g})
      add(*t);
  }
  for (const Tensor* t : {&ws_.dxn, &ws_.dnorm, &ws_.attn.d_out, &ws_.attn.dq, &ws_.attn.dk, &ws_.attn.dv,
                          &ws_.ffn.dg, &ws_.ffn.da1, &ws_.ffn.da3, &final_norm_out_, &final_rstd_,
                          &d_hidden_, &d_resid_, &classifier_scratch_, &rope_.cos, &rope_.sin})
    add(*t);
  return r;
}

}  // namespace titan::llama3
