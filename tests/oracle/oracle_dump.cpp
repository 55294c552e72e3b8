// Runs one titan CPU computation on random inputs and writes inputs, outputs and gradients to
// a TTNS file, for the PyTorch oracle scripts beside this file to check.
//   oracle_dump op NAME key=value... out=FILE
//   oracle_dump model key=value... out=FILE
//   oracle_dump train key=value... out=FILE
#include <cmath>
#include <cstring>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "tensor_file.h"
#include "titan/checkpoint/hf_llama.h"
#include "titan/core/rng.h"
#include "titan/models/llama3/transformer.h"
#include "titan/ops/cpu/cpu_backend.h"
#include "titan/ops/float8.h"
#include "titan/ops/ops.h"
#include "titan/optim/adamw.h"
#include "titan/optim/grad_clip.h"
#include "titan/optim/lr_schedule.h"

using namespace titan;
using titan::testing::TensorFile;

namespace {

struct Args {
  std::map<std::string, std::string> kv;
  int64_t i(const std::string& k) const { return std::stoll(kv.at(k)); }
  double f(const std::string& k) const { return std::stod(kv.at(k)); }
  std::string s(const std::string& k) const { return kv.at(k); }
};

std::vector<float> randn(uint64_t seed, const std::string& name, int64_t n, float scale = 1.0f, float shift = 0.0f) {
  NamedStream s(seed, name);
  std::vector<float> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = shift + scale * s.normal(i);
  return v;
}

std::vector<int32_t> randint(uint64_t seed, const std::string& name, int64_t n, int64_t hi) {
  NamedStream s(seed, name);
  std::vector<int32_t> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = static_cast<int32_t>(std::min<int64_t>(hi - 1, static_cast<int64_t>(s.uniform(i) * hi)));
  return v;
}

void run_op(const std::string& op, const Args& a, TensorFile& f) {
  const uint64_t seed = a.i("seed");
  if (op == "linear") {
    const int64_t n = a.i("n"), in = a.i("in_features"), out = a.i("out_features");
    auto x = randn(seed, "x", n * in), w = randn(seed, "w", out * in, 0.2f), dy = randn(seed, "dy", n * out);
    std::vector<float> y(n * out), dx(n * in), dw(out * in, 0.0f);
    cpu::linear_forward(x.data(), w.data(), y.data(), n, in, out);
    cpu::linear_backward(x.data(), w.data(), dy.data(), dx.data(), dw.data(), n, in, out, 0.0f);
    f.add("x", {n, in}, x.data()); f.add("w", {out, in}, w.data()); f.add("dy", {n, out}, dy.data());
    f.add("y", {n, out}, y.data()); f.add("dx", {n, in}, dx.data()); f.add("dw", {out, in}, dw.data());
  } else if (op == "rmsnorm") {
    const int64_t n = a.i("n"), d = a.i("d");
    // x_scale: inputs small enough that eps (1e-5) weighs against their mean square.
    const float x_scale = a.kv.count("x_scale") ? static_cast<float>(a.f("x_scale")) : 2.0f;
    auto x = randn(seed, "x", n * d, x_scale), w = randn(seed, "w", d, 0.1f, 1.0f), dy = randn(seed, "dy", n * d);
    std::vector<float> y(n * d), rstd(n), dx(n * d), dw(d, 0.0f);
    cpu::rmsnorm_forward(x.data(), w.data(), y.data(), rstd.data(), n, d, 1e-5f);
    cpu::rmsnorm_backward(x.data(), w.data(), rstd.data(), dy.data(), dx.data(), dw.data(), n, d);
    f.add("x", {n, d}, x.data()); f.add("w", {d}, w.data()); f.add("dy", {n, d}, dy.data());
    f.add("y", {n, d}, y.data()); f.add("dx", {n, d}, dx.data()); f.add("dw", {d}, dw.data());
  } else if (op == "rope") {
    const int64_t b = a.i("batch"), t = a.i("seq"), h = a.i("heads"), hd = a.i("head_dim");
    const double theta = a.f("theta");
    auto x = randn(seed, "x", b * t * h * hd), dy = randn(seed, "dy", b * t * h * hd);
    std::vector<float> cos(t * hd / 2), sin(t * hd / 2), y = x, dx = dy;
    cpu::rope_tables(cos.data(), sin.data(), t, hd, theta);
    cpu::rope_forward(y.data(), cos.data(), sin.data(), b, t, h, hd);
    cpu::rope_backward(dx.data(), cos.data(), sin.data(), b, t, h, hd);
    f.add("x", {b, t, h, hd}, x.data()); f.add("dy", {b, t, h, hd}, dy.data());
    f.add("y", {b, t, h, hd}, y.data()); f.add("dx", {b, t, h, hd}, dx.data());
  } else if (op == "attention") {
    cpu::AttentionShape s{a.i("batch"), a.i("seq"), a.i("heads"), a.i("kv_heads"), a.i("head_dim")};
    const int64_t nq = s.batch * s.seq * s.heads * s.head_dim, nk = s.batch * s.seq * s.kv_heads * s.head_dim;
    auto q = randn(seed, "q", nq), k = randn(seed, "k", nk), v = randn(seed, "v", nk), dy = randn(seed, "dy", nq);
    std::vector<float> o(nq), lse(s.batch * s.heads * s.seq), dq(nq), dk(nk), dv(nk);
    cpu::attention_forward(q.data(), k.data(), v.data(), o.data(), lse.data(), s);
    cpu::attention_backward(q.data(), k.data(), v.data(), o.data(), lse.data(), dy.data(), dq.data(), dk.data(), dv.data(), s);
    const std::vector<int64_t> qs{s.batch, s.seq, s.heads, s.head_dim}, ks{s.batch, s.seq, s.kv_heads, s.head_dim};
    f.add("q", qs, q.data()); f.add("k", ks, k.data()); f.add("v", ks, v.data()); f.add("dy", qs, dy.data());
    f.add("o", qs, o.data()); f.add("dq", qs, dq.data()); f.add("dk", ks, dk.data()); f.add("dv", ks, dv.data());
  } else if (op == "swiglu") {
    const int64_t n = a.i("n");
    auto x = randn(seed, "a", n, 3.0f), y = randn(seed, "b", n), dg = randn(seed, "dg", n);
    std::vector<float> g(n), da(n), db(n);
    cpu::swiglu_forward(x.data(), y.data(), g.data(), n);
    cpu::swiglu_backward(x.data(), y.data(), dg.data(), da.data(), db.data(), n);
    f.add("a", {n}, x.data()); f.add("b", {n}, y.data()); f.add("dg", {n}, dg.data());
    f.add("g", {n}, g.data()); f.add("da", {n}, da.data()); f.add("db", {n}, db.data());
  } else if (op == "embedding") {
    const int64_t n = a.i("n"), vocab = a.i("vocab"), d = a.i("d");
    auto tok = randint(seed, "tok", n, vocab);
    auto w = randn(seed, "w", vocab * d), dy = randn(seed, "dy", n * d);
    std::vector<float> y(n * d), dw(vocab * d, 0.0f);
    cpu::embedding_forward(tok.data(), w.data(), y.data(), n, vocab, d);
    cpu::embedding_backward(tok.data(), dy.data(), dw.data(), n, d);
    f.add("tokens", {n}, tok.data()); f.add("w", {vocab, d}, w.data()); f.add("dy", {n, d}, dy.data());
    f.add("y", {n, d}, y.data()); f.add("dw", {vocab, d}, dw.data());
  } else if (op == "cross_entropy") {
    const int64_t n = a.i("n"), d = a.i("d"), vocab = a.i("vocab");
    auto h = randn(seed, "h", n * d), w = randn(seed, "w", vocab * d, 0.3f);
    auto labels = randint(seed, "labels", n, vocab);
    for (int64_t i = 0; i < n; i += 7) labels[i] = -100;  // some ignored positions
    int64_t counted = 0;
    for (auto l : labels) counted += l != -100;
    std::vector<float> dh(n * d), dw(vocab * d, 0.0f), scratch(cpu::classifier_scratch_floats(n, vocab));
    auto r = cpu::classifier_forward_backward(h.data(), w.data(), labels.data(), n, d, vocab, -100,
                                              1.0f / static_cast<float>(counted), dh.data(), dw.data(),
                                              scratch.data());
    float loss = static_cast<float>(r.loss_sum / static_cast<double>(r.count));
    f.add("h", {n, d}, h.data()); f.add("w", {vocab, d}, w.data()); f.add("labels", {n}, labels.data());
    f.add("loss", {1}, &loss); f.add("dh", {n, d}, dh.data()); f.add("dw", {vocab, d}, dw.data());
  } else if (op == "float8_cast") {
    // Every float32 whose low 16 bits are one of a few patterns: all signs, exponents and the
    // top 7 mantissa bits, so every float8 value, every tie between two of them (trailing zeros),
    // values either side of each tie, subnormals of both widths, +-inf and NaN.
    const uint32_t lows[] = {0x0000, 0x0001, 0x7FFF, 0x8000, 0x8001, 0xFFFF};
    std::vector<float> x;
    for (uint32_t hi = 0; hi < 0x10000; ++hi)
      for (uint32_t lo : lows) {
        const uint32_t bits = hi << 16 | lo;
        float v;
        std::memcpy(&v, &bits, sizeof v);
        x.push_back(v);
      }
    const int64_t n = static_cast<int64_t>(x.size());
    f.add("x", {n}, x.data());
    for (auto fmt : {float8::Format::e4m3, float8::Format::e5m2}) {
      std::vector<float> value(n), bits(n), decoded(n);
      for (int64_t i = 0; i < n; ++i) {
        value[i] = float8::saturate_round(x[i], fmt);
        const uint8_t b = float8::encode(x[i], fmt);
        bits[i] = b;
        decoded[i] = float8::decode(b, fmt);
      }
      const std::string k = float8::name(fmt);
      f.add(k + "_value", {n}, value.data()); f.add(k + "_bits", {n}, bits.data()); f.add(k + "_decoded", {n}, decoded.data());
    }
  } else if (op == "float8_linear") {
    // The CPU backend's emulated float8 linear under one recipe. Power-of-two scales make the
    // cast scale-invariant except where values fall to float8's subnormals or saturate, so a
    // scale taken along the wrong axis only shows across a range wider than e4m3's (2^15): the
    // rows and columns of x, W and dY span 2^16 and more, each along its own axis (dY's rows
    // against x's, so every row weighs alike in dW = dY^T x).
    const int64_t n = a.i("n"), in = a.i("in_features"), out = a.i("out_features");
    auto x = randn(seed, "x", n * in), w = randn(seed, "w", out * in, 0.2f), dy = randn(seed, "dy", n * out, 1e-3f);
    auto spread = [](std::vector<float>& m, int64_t cols, int row_shift, int col_shift) {
      for (size_t i = 0; i < m.size(); ++i)
        m[i] = std::ldexp(m[i], row_shift * static_cast<int>((i / cols) % 3) + col_shift * static_cast<int>((i % cols) % 5));
    };
    spread(x, in, 8, 1);
    spread(w, in, 8, 4);
    spread(dy, out, -8, 4);
    std::vector<float> y(n * out), dx(n * in), dw(out * in, 0.0f);
    cpu::CpuBackend backend;
    backend.set_float8_recipe(float8::recipe(a.s("recipe")));
    backend.linear_forward(x.data(), {w.data()}, y.data(), n, in, out, LinearPrecision::float8);
    backend.linear_backward(x.data(), {w.data()}, dy.data(), dx.data(), dw.data(), n, in, out, 0.0f, LinearPrecision::float8);
    f.add("x", {n, in}, x.data()); f.add("w", {out, in}, w.data()); f.add("dy", {n, out}, dy.data());
    f.add("y", {n, out}, y.data()); f.add("dx", {n, in}, dx.data()); f.add("dw", {out, in}, dw.data());
  } else {
    throw std::runtime_error("unknown op " + op);
  }
}

// An HF Llama folder through titan's import and CPU model: logits [n, vocab] of `tokens`
// (comma-separated ids), to compare with transformers' on the same folder.
void run_hf_logits(const Args& a, TensorFile& f) {
  const auto m = checkpoint::import_hf(a.s("dir"));
  llama3::Transformer model(m.args);
  for (auto& p : model.parameters()) {
    const auto& w = m.weights.at(p.name);
    std::copy(w.begin(), w.end(), p.master.f32());
  }
  std::vector<int32_t> tokens;
  std::istringstream in(a.s("tokens"));
  for (std::string t; std::getline(in, t, ',');) tokens.push_back(static_cast<int32_t>(std::stoi(t)));
  const int64_t n = static_cast<int64_t>(tokens.size());
  std::vector<float> logits(static_cast<size_t>(n * m.args.vocab_size));
  model.forward_logits(tokens.data(), {1, n}, logits.data());
  f.add("logits", {n, m.args.vocab_size}, logits.data());
}

llama3::ModelArgs model_args(const Args& a) {
  llama3::ModelArgs m;
  m.dim = a.i("dim");
  m.n_layers = a.i("layers");
  m.n_heads = a.i("heads");
  m.n_kv_heads = a.i("kv_heads");
  m.vocab_size = a.i("vocab");
  m.multiple_of = a.i("multiple_of");
  if (a.kv.count("ffn_mult")) m.ffn_dim_multiplier = a.f("ffn_mult");
  m.rope_theta = a.f("theta");
  return m;
}

void add_params(llama3::Transformer& model, TensorFile& f, const std::string& prefix, bool grads) {
  for (auto& p : model.parameters()) {
    const Tensor& t = grads ? p.grad : p.master;
    f.add(prefix + p.name, p.global_shape, t.f32());
  }
}

void run_model(const Args& a, TensorFile& f) {
  const auto args = model_args(a);
  const uint64_t seed = a.i("seed");
  const llama3::BatchShape s{a.i("batch"), a.i("seq")};
  llama3::Transformer model(args);
  model.init_weights(seed);
  auto tokens = randint(seed, "tokens", s.rows(), args.vocab_size);
  auto labels = randint(seed, "labels", s.rows(), args.vocab_size);
  labels[0] = -100;
  std::vector<float> logits(s.rows() * args.vocab_size);
  model.forward_logits(tokens.data(), s, logits.data());
  model.zero_grad();
  auto r = model.forward_backward(tokens.data(), labels.data(), s, 1.0f / static_cast<float>(s.rows() - 1));
  float loss = static_cast<float>(r.loss_sum / static_cast<double>(r.count));
  add_params(model, f, "param.", false);
  add_params(model, f, "grad.", true);
  f.add("tokens", {s.batch, s.seq}, tokens.data());
  f.add("labels", {s.batch, s.seq}, labels.data());
  f.add("logits", {s.batch, s.seq, args.vocab_size}, logits.data());
  f.add("loss", {1}, &loss);
}

void run_train(const Args& a, TensorFile& f) {
  const auto args = model_args(a);
  const uint64_t seed = a.i("seed");
  const int64_t steps = a.i("steps");
  const llama3::BatchShape s{a.i("batch"), a.i("seq")};
  llama3::Transformer model(args);
  model.init_weights(seed);
  add_params(model, f, "param.", false);
  optim::AdamW opt({a.f("lr"), 0.9, 0.95, 1e-8, a.f("weight_decay")});
  optim::LrSchedule sched{a.i("warmup"), steps, optim::DecayKind::linear};
  std::vector<float> losses, norms;
  std::vector<int32_t> all_tokens, all_labels;
  for (int64_t step = 0; step < steps; ++step) {
    auto tokens = randint(seed + step, "tokens", s.rows(), args.vocab_size);
    auto labels = randint(seed + step, "labels", s.rows(), args.vocab_size);
    all_tokens.insert(all_tokens.end(), tokens.begin(), tokens.end());
    all_labels.insert(all_labels.end(), labels.begin(), labels.end());
    model.zero_grad();
    auto r = model.forward_backward(tokens.data(), labels.data(), s, 1.0f / static_cast<float>(s.rows()));
    losses.push_back(static_cast<float>(r.loss_sum / static_cast<double>(r.count)));
    double norm = std::sqrt(optim::grad_sq_sum(model.parameters()));
    norms.push_back(static_cast<float>(norm));
    optim::clip_grads(model.parameters(), norm, a.f("max_norm"));
    opt.step(model.parameters(), a.f("lr") * sched.factor(step));
  }
  f.add("tokens", {steps, s.batch, s.seq}, all_tokens.data());
  f.add("labels", {steps, s.batch, s.seq}, all_labels.data());
  f.add("losses", {steps}, losses.data());
  f.add("grad_norms", {steps}, norms.data());
  // The state after the last step: a wrong beta, eps or decay can hide in ten losses, not here.
  add_params(model, f, "final.", false);
  for (auto& p : model.parameters()) {
    f.add("exp_avg." + p.name, p.global_shape, p.exp_avg.f32());
    f.add("exp_avg_sq." + p.name, p.global_shape, p.exp_avg_sq.f32());
  }
}

}  // namespace

int main(int argc, char** argv) {
  try {
    if (argc < 2) throw std::runtime_error("usage: oracle_dump op NAME|model|train|hf_logits key=value... out=FILE");
    const std::string mode = argv[1];
    int first = mode == "op" ? 3 : 2;
    Args a;
    for (int i = first; i < argc; ++i) {
      std::string s = argv[i];
      auto eq = s.find('=');
      if (eq == std::string::npos) throw std::runtime_error("expected key=value, got " + s);
      a.kv[s.substr(0, eq)] = s.substr(eq + 1);
    }
    TensorFile f;
    if (mode == "op") run_op(argv[2], a, f);
    else if (mode == "model") run_model(a, f);
    else if (mode == "train") run_train(a, f);
    else if (mode == "hf_logits") run_hf_logits(a, f);
    else throw std::runtime_error("unknown mode " + mode);
    f.save(a.s("out"));
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "oracle_dump: " << e.what() << "\n";
    return 1;
  }
}
