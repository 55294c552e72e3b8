#include "titan/models/llama3/model.h"

#include <algorithm>
#include <string>
#include <vector>

#include "titan/core/error.h"

namespace titan::llama3 {

Model::Model(const ModelArgs& args, Backend& backend, WeightStore& weights, TensorParallelRank tp)
    : args_(args), layout_((args.validate("model"), args), tp), backend_(backend), weights_(weights) {
  for (int64_t l = 0; l < args.n_layers; ++l) {
    auto b = [&](Role r) { return layout_.block_index(l, r); };
    blocks_.push_back({b(Role::wq), b(Role::wk), b(Role::wv), b(Role::wo), b(Role::w1), b(Role::w2), b(Role::w3),
                       b(Role::attention_norm), b(Role::ffn_norm)});
  }
  embedding_ = layout_.root_index(Role::tok_embeddings);
  norm_ = layout_.root_index(Role::norm);
  output_ = layout_.root_index(Role::output);
  const int64_t hd = args.head_dim();
  heads_ = layout_[blocks_.at(0).wq].shape[0] / hd;
  kv_heads_ = layout_[blocks_.at(0).wk].shape[0] / hd;
  ffn_ = layout_[blocks_.at(0).w1].shape[0];
  vocab_ = layout_[output_].shape[0];
  vocab_begin_ = layout_[output_].row_offset;
  TITAN_CHECK(layout_[embedding_].shape[0] == vocab_ && layout_[embedding_].row_offset == vocab_begin_,
              "the embedding and the classifier hold different vocabulary rows");
}

void Model::set_tensor_parallel(TensorParallelHooks* tp, bool loss_parallel) {
  loss_parallel_ = loss_parallel;
  TITAN_CHECK((tp ? tp->degree() : 1) == layout_.tensor_parallel().degree, "tensor parallel hooks of degree ",
              tp ? tp->degree() : 1, " for a model sliced over ", layout_.tensor_parallel().degree);
  tp_ = tp && tp->degree() > 1 ? tp : nullptr;
  ac_planned_ = false;  // the backend's classifier scratch follows loss parallel
}

void Model::gather_norm_output(int buffer, int64_t rows) {
  if (tp_) tp_->gather_rows(act(plan_.norm_shard), act(buffer), rows, args_.dim);
}

void Model::scatter_partial(int buffer, int64_t rows) {
  if (tp_) tp_->reduce_scatter_rows(act(plan_.partial), act(buffer), rows, args_.dim);
}

const void* Model::gathered_gradient(int64_t rows) {
  if (!tp_) return act(plan_.d_resid);
  tp_->gather_rows(act(plan_.d_resid), act(plan_.d_full), rows, args_.dim);
  return act(plan_.d_full);
}

const void* Model::scattered_gradient(int buffer, int64_t rows) {
  if (!tp_) return act(buffer);
  tp_->reduce_scatter_rows(act(buffer), act(plan_.norm_shard), rows, args_.dim);
  return act(plan_.norm_shard);
}

void Model::classify(void* dh, float* dw, int64_t n, int32_t ignore_index, float grad_scale) {
  if (tp_)
    backend_.classifier_vocab_shard(act(plan_.final_out), w(output_), dh, dw, n, args_.dim, vocab_, vocab_begin_,
                                    args_.vocab_size, ignore_index, grad_scale, *tp_, loss_parallel_);
  else
    backend_.classifier(act(plan_.final_out), w(output_), dh, dw, n, args_.dim, args_.vocab_size, ignore_index,
                        grad_scale);
}

void Model::set_activation_checkpointing(const ActivationCheckpointing& ac) {
  TITAN_CHECK(ac.every >= 1, "activation checkpointing every ", ac.every);
  ac_ = ac;
  ac_planned_ = false;
}

void Model::set_float8_linears(const Float8Linears& f) {
  for (const size_t i : f.converted) layout_.set_precision(i, LinearPrecision::float8);
  backend_.set_float8_recipe(f.recipe);
  ac_planned_ = false;  // the backend's scratch grows by the casts
}

void Model::plan(BatchShape s) {
  if (s == plan_.shape && ac_planned_) return;
  buffers_.clear();  // the old plan's memory goes back before the new one is taken
  ++plan_generation_;
  plan_ = plan_activations(args_, s, ac_, layout_.tensor_parallel().degree);
  for (const auto& b : plan_.buffers)
    buffers_.push_back(backend_.allocate(static_cast<size_t>(b.elements) *
                                         (b.f32 ? sizeof(float) : dtype_size(backend_.compute_dtype()))));
  const int64_t half = args_.head_dim() / 2;
  std::vector<float> cos(static_cast<size_t>(s.seq * half)), sin(cos.size());
  cpu::rope_tables(cos.data(), sin.data(), s.seq, args_.head_dim(), args_.rope_theta, args_.rope_scaling);
  backend_.upload_f32(f32(plan_.rope_cos), cos.data(), s.seq * half);
  backend_.upload_f32(f32(plan_.rope_sin), sin.data(), s.seq * half);
  bool float8 = false;
  for (const auto& t : layout_.tensors()) float8 |= t.precision == LinearPrecision::float8;
  backend_.prepare({s, args_.dim, heads_, args_.head_dim(), vocab_, ffn_, float8, layout_.tensor_parallel().degree,
                    loss_parallel_});
  ac_planned_ = true;
}

void Model::linear(const void* x, size_t weight, void* y, int64_t n) {
  const TensorSpec& t = layout_[weight];
  backend_.linear_forward(x, linear_weight(weight), y, n, t.shape[1], t.shape[0], t.precision);
}

void Model::linear_backward(const void* x, size_t weight, const void* dy, void* dx, int64_t n, float dx_beta) {
  const TensorSpec& t = layout_[weight];
  backend_.linear_backward(x, linear_weight(weight), dy, dx, dw(weight), n, t.shape[1], t.shape[0], dx_beta, t.precision);
}

void Model::block_forward(int64_t layer, BatchShape s, KvCache* cache) {
  const BlockWeights& bw = blocks_[static_cast<size_t>(layer)];
  const BlockBuffers& a = plan_.blocks[static_cast<size_t>(layer)];
  const int64_t n = s.rows(), m = stream_rows(s), d = args_.dim, hd = args_.head_dim();
  const void* x = act(plan_.residual[static_cast<size_t>(layer)]);
  const int out = plan_.residual[static_cast<size_t>(layer) + 1];
  backend_.rmsnorm_forward(x, w(bw.attention_norm), norm_output(a.xn), f32(a.rstd1), m, d, args_.norm_eps);
  gather_norm_output(a.xn, m);
  linear(act(a.xn), bw.wq, act(a.q), n);
  linear(act(a.xn), bw.wk, act(a.k), n);
  linear(act(a.xn), bw.wv, act(a.v), n);
  if (!cache) {
    backend_.rope(act(a.q), f32(plan_.rope_cos), f32(plan_.rope_sin), s.batch, s.seq, heads_, hd, false);
    backend_.rope(act(a.k), f32(plan_.rope_cos), f32(plan_.rope_sin), s.batch, s.seq, kv_heads_, hd, false);
    backend_.attention_forward(act(a.q), act(a.k), act(a.v), act(a.att), f32(a.lse), {s.batch, s.seq, heads_, kv_heads_, hd});
  } else {  // the tables offset to this position: a one-row batch then rotates by angle(position)
    const int64_t pos = cache->position, half = hd / 2, kvd = kv_heads_ * hd;
    const float* cos = cache->cos.as<float>() + pos * half;
    const float* sin = cache->sin.as<float>() + pos * half;
    backend_.rope(act(a.q), cos, sin, 1, 1, heads_, hd, false);
    backend_.rope(act(a.k), cos, sin, 1, 1, kv_heads_, hd, false);
    const size_t row = static_cast<size_t>(kvd) * dtype_size(backend_.compute_dtype()), at = static_cast<size_t>(pos) * row;
    char* k_cache = cache->k[static_cast<size_t>(layer)].as<char>();
    char* v_cache = cache->v[static_cast<size_t>(layer)].as<char>();
    backend_.copy(k_cache + at, act(a.k), kvd);
    backend_.copy(v_cache + at, act(a.v), kvd);
    backend_.attention_decode(act(a.q), k_cache, v_cache, act(a.att), pos + 1, heads_, kv_heads_, hd);
  }
  linear(act(a.att), bw.wo, partial_output(a.proj), n);
  scatter_partial(a.proj, m);
  backend_.add_rmsnorm_forward(x, act(a.proj), act(a.h), w(bw.ffn_norm), norm_output(a.hn), f32(a.rstd2), m, d,
                               args_.norm_eps);
  gather_norm_output(a.hn, m);
  linear(act(a.hn), bw.w1, act(a.a1), n);
  linear(act(a.hn), bw.w3, act(a.a3), n);
  backend_.swiglu_forward(act(a.a1), act(a.a3), act(a.g), n * ffn_);
  linear(act(a.g), bw.w2, partial_output(out), n);
  scatter_partial(out, m);
  backend_.add(act(a.h), act(out), act(out), m * d);
}

void Model::block_recompute_selected_ops(int64_t layer, BatchShape s) {
  const BlockWeights& bw = blocks_[static_cast<size_t>(layer)];
  const BlockBuffers& a = plan_.blocks[static_cast<size_t>(layer)];
  const int64_t n = s.rows(), m = stream_rows(s), d = args_.dim;
  const void* x = act(plan_.residual[static_cast<size_t>(layer)]);
  backend_.rmsnorm_forward(x, w(bw.attention_norm), norm_output(a.xn), f32(a.rstd1), m, d, args_.norm_eps);
  gather_norm_output(a.xn, m);
  linear(act(a.xn), bw.wk, act(a.k), n);
  backend_.rope(act(a.k), f32(plan_.rope_cos), f32(plan_.rope_sin), s.batch, s.seq, kv_heads_, args_.head_dim(), false);
  linear(act(a.att), bw.wo, partial_output(a.proj), n);
  scatter_partial(a.proj, m);
  backend_.add_rmsnorm_forward(x, act(a.proj), act(a.h), w(bw.ffn_norm), norm_output(a.hn), f32(a.rstd2), m, d,
                               args_.norm_eps);
  gather_norm_output(a.hn, m);
  linear(act(a.hn), bw.w3, act(a.a3), n);
  backend_.swiglu_forward(act(a.a1), act(a.a3), act(a.g), n * ffn_);
}

void Model::block_backward(int64_t layer, BatchShape s) {
  const BlockWeights& bw = blocks_[static_cast<size_t>(layer)];
  const BlockBuffers& a = plan_.blocks[static_cast<size_t>(layer)];
  const BackwardBuffers& g = plan_.backward;
  const int64_t n = s.rows(), m = stream_rows(s), d = args_.dim, hd = args_.head_dim();
  void* dr = act(plan_.d_resid);
  // d(out) reaches h through the residual; add the path through the feed-forward.
  linear_backward(act(a.g), bw.w2, gathered_gradient(m), act(g.dg), n, 0.0f);
  backend_.swiglu_backward(act(a.a1), act(a.a3), act(g.dg), act(g.da1), act(g.da3), n * ffn_);
  linear_backward(act(a.hn), bw.w1, act(g.da1), act(g.dxn), n, 0.0f);
  linear_backward(act(a.hn), bw.w3, act(g.da3), act(g.dxn), n, 1.0f);
  backend_.rmsnorm_backward(act(a.h), w(bw.ffn_norm), f32(a.rstd2), scattered_gradient(g.dxn, m), dr, true,
                            dw(bw.ffn_norm), m, d);
  // Now dr = d(h), which reaches x through the residual; add the path through attention.
  linear_backward(act(a.att), bw.wo, gathered_gradient(m), act(g.d_att), n, 0.0f);
  backend_.attention_backward(act(a.q), act(a.k), act(a.v), act(a.att), f32(a.lse), act(g.d_att), act(g.dq), act(g.dk),
                              act(g.dv), {s.batch, s.seq, heads_, kv_heads_, hd});
  backend_.rope(act(g.dq), f32(plan_.rope_cos), f32(plan_.rope_sin), s.batch, s.seq, heads_, hd, true);
  backend_.rope(act(g.dk), f32(plan_.rope_cos), f32(plan_.rope_sin), s.batch, s.seq, kv_heads_, hd, true);
  linear_backward(act(a.xn), bw.wq, act(g.dq), act(g.dxn), n, 0.0f);
  linear_backward(act(a.xn), bw.wk, act(g.dk), act(g.dxn), n, 1.0f);
  linear_backward(act(a.xn), bw.wv, act(g.dv), act(g.dxn), n, 1.0f);
  backend_.rmsnorm_backward(act(plan_.residual[static_cast<size_t>(layer)]), w(bw.attention_norm), f32(a.rstd1),
                            scattered_gradient(g.dxn, m), dr, true, dw(bw.attention_norm), m, d);
}

void Model::load_batch(const int32_t* tokens, const int32_t* labels, BatchShape s, bool backward_follows,
                       int32_t ignore_index) {
  plan(s);
  backend_.load_batch(tokens, labels, s.rows(), args_.vocab_size, ignore_index, backward_follows);
}

void Model::forward_hidden(BatchShape s, bool backward_follows, Tracer* tracer, KvCache* cache) {
  TITAN_CHECK(layout_.tensor_parallel().degree == 1 || tp_, "a tensor-parallel model without its collectives");
  const int64_t n = s.rows(), m = stream_rows(s);
  hook_before_forward(0);
  {
    Tracer::Span span(tracer, "forward embedding");
    backend_.embedding_forward(w(embedding_), partial_output(plan_.residual[0]), n, args_.dim, vocab_begin_, vocab_);
    scatter_partial(plan_.residual[0], m);
  }
  for (int64_t i = 0; i < args_.n_layers; ++i) {
    const int unit = static_cast<int>(i) + 1;
    hook_before_forward(unit);
    Tracer::Span span(tracer, "forward layers." + std::to_string(i));
    block_forward(i, s, cache);
    hook_after_forward(unit, backward_follows);
  }
  backend_.rmsnorm_forward(act(plan_.residual.back()), w(norm_), norm_output(plan_.final_out), f32(plan_.final_rstd), m,
                           args_.dim, args_.norm_eps);
  gather_norm_output(plan_.final_out, m);
}

void Model::enqueue_forward_backward(BatchShape s, float grad_scale, int32_t ignore_index, Tracer* tracer) {
  TITAN_CHECK(s == plan_.shape && ac_planned_, "a pass of ", s.batch, " x ", s.seq, " without its plan");
  forward_hidden(s, true, tracer);
  const int64_t n = s.rows(), m = stream_rows(s);
  hook_after_forward(0, true);
  hook_before_backward(0);
  {
    Tracer::Span span(tracer, "loss (output projection + cross-entropy, forward and backward)");
    classify(act(plan_.d_hidden), dw(output_), n, ignore_index, grad_scale);
    backend_.rmsnorm_backward(act(plan_.residual.back()), w(norm_), f32(plan_.final_rstd),
                              scattered_gradient(plan_.d_hidden, m), act(plan_.d_resid), false, dw(norm_), m, args_.dim);
  }
  for (int64_t i = args_.n_layers; i-- > 0;) {
    const int unit = static_cast<int>(i) + 1;
    hook_before_backward(unit);
    Tracer::Span span(tracer, "backward layers." + std::to_string(i));
    if (plan_.ac.recomputes_block(i)) {
      // Its output is rewritten with the same values: the block above has finished its backward.
      block_forward(i, s);
    } else if (plan_.ac.recomputes_selected_ops()) {
      block_recompute_selected_ops(i, s);
    }
    block_backward(i, s);
    hook_after_backward(unit);
  }
  {
    Tracer::Span span(tracer, "backward embedding");
    backend_.embedding_backward(gathered_gradient(m), dw(embedding_), n, args_.dim, vocab_begin_, vocab_);
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
  load_batch(tokens, labels, s, true, ignore_index);
  enqueue_forward_backward(s, grad_scale, ignore_index, tracer);
  return {backend_.loss_sum(), counted(labels, s.rows(), ignore_index)};
}

cpu::ClassifierResult Model::forward_loss(const int32_t* tokens, const int32_t* labels, BatchShape s,
                                          int32_t ignore_index) {
  load_batch(tokens, labels, s, false, ignore_index);
  forward_hidden(s, false, nullptr);
  classify(nullptr, nullptr, s.rows(), ignore_index, 0.0f);
  const double loss_sum = backend_.loss_sum();
  hook_after_forward(0, false);
  return {loss_sum, counted(labels, s.rows(), ignore_index)};
}

void Model::forward_logits(const int32_t* tokens, BatchShape s, float* logits) {
  TITAN_CHECK(!tp_, "logits of a tensor-parallel model (generation runs on one rank)");
  load_batch(tokens, nullptr, s, false);
  forward_hidden(s, false, nullptr);
  backend_.logits(act(plan_.final_out), w(output_), logits, s.rows(), args_.dim, args_.vocab_size);
  hook_after_forward(0, false);
}

KvCache Model::make_kv_cache(int64_t max_len) {
  TITAN_CHECK(max_len > 0, "empty KV cache");
  TITAN_CHECK(layout_.tensor_parallel().degree == 1, "a KV cache for a tensor-parallel model (generation runs on one rank)");
  KvCache c;
  c.max_len = max_len;
  const size_t rows = static_cast<size_t>(max_len * args_.kv_dim()) * dtype_size(backend_.compute_dtype());
  for (int64_t l = 0; l < args_.n_layers; ++l) {
    c.k.push_back(backend_.allocate(rows));
    c.v.push_back(backend_.allocate(rows));
  }
  const int64_t half = args_.head_dim() / 2;
  std::vector<float> cos(static_cast<size_t>(max_len * half)), sin(cos.size());
  cpu::rope_tables(cos.data(), sin.data(), max_len, args_.head_dim(), args_.rope_theta, args_.rope_scaling);
  c.cos = backend_.allocate(cos.size() * sizeof(float));
  c.sin = backend_.allocate(sin.size() * sizeof(float));
  backend_.upload_f32(c.cos.as<float>(), cos.data(), max_len * half);
  backend_.upload_f32(c.sin.as<float>(), sin.data(), max_len * half);
  return c;
}

void Model::decode(int32_t token, KvCache& cache, float* logits) {
  TITAN_CHECK(cache.position < cache.max_len, "KV cache full at ", cache.max_len, " positions");
  TITAN_CHECK(token >= 0 && token < args_.vocab_size, "token ", token, " outside the vocabulary");
  const BatchShape one{1, 1};
  load_batch(&token, nullptr, one, false);
  forward_hidden(one, false, nullptr, &cache);
  backend_.logits(act(plan_.final_out), w(output_), logits, 1, args_.dim, args_.vocab_size);
  hook_after_forward(0, false);
  ++cache.position;
}

}  // namespace titan::llama3
