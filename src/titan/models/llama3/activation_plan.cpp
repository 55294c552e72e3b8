#include "titan/models/llama3/activation_plan.h"

#include "titan/core/error.h"

namespace titan::llama3 {

double ActivationPlan::bytes(size_t compute_bytes) const {
  double total = 0;
  for (const auto& b : buffers) total += double(b.elements) * double(b.f32 ? 4 : compute_bytes);
  return total;
}

ActivationPlan plan_activations(const ModelArgs& a, BatchShape s, const ActivationCheckpointing& ac, int tp) {
  TITAN_CHECK(s.batch > 0 && s.seq > 0, "empty batch shape");
  TITAN_CHECK(ac.every >= 1, "activation checkpointing every ", ac.every);
  TITAN_CHECK(tp >= 1 && s.rows() % tp == 0 && a.n_heads % tp == 0 && a.n_kv_heads % tp == 0 && a.ffn_hidden() % tp == 0,
              "tensor parallel degree ", tp, " for ", s.rows(), " rows, ", a.n_heads, " heads, ", a.n_kv_heads,
              " KV heads, feed-forward ", a.ffn_hidden());
  ActivationPlan p;
  p.shape = s;
  p.ac = ac;
  p.tp_degree = tp;
  const int64_t n = s.rows(), d = a.dim, heads = a.n_heads / tp, qd = heads * a.head_dim(), kvd = a.kv_dim() / tp,
                f = a.ffn_hidden() / tp;
  const int64_t lse = s.batch * heads * s.seq;
  const int64_t rows = n / tp;  // between blocks
  auto add = [&](std::string name, int64_t elements, bool f32 = false) {
    p.buffers.push_back({std::move(name), elements, f32});
    return static_cast<int>(p.buffers.size()) - 1;
  };
  for (int64_t i = 0; i <= a.n_layers; ++i) p.residual.push_back(add("residual." + std::to_string(i), rows * d));
  // Each group of buffers once per owner; owner "shared" when blocks share it.
  auto elementwise = [&](BlockBuffers& b, const std::string& owner) {
    b.xn = add(owner + ".xn", n * d);
    b.rstd1 = add(owner + ".rstd1", rows, true);
    b.h = add(owner + ".h", rows * d);
    b.hn = add(owner + ".hn", n * d);
    b.rstd2 = add(owner + ".rstd2", rows, true);
    b.g = add(owner + ".g", n * f);
  };
  auto kept = [&](BlockBuffers& b, const std::string& owner) {
    b.q = add(owner + ".q", n * qd);
    b.k = add(owner + ".k", n * kvd);
    b.v = add(owner + ".v", n * kvd);
    b.att = add(owner + ".att", n * qd);
    b.lse = add(owner + ".lse", lse, true);
    b.a1 = add(owner + ".a1", n * f);
    b.a3 = add(owner + ".a3", n * f);
  };
  // wo's output is read once, by the residual add: one buffer for all blocks.
  const int shared_proj = add("shared.proj", rows * d);
  BlockBuffers recomputed{}, shared_ops{};
  bool have_recomputed = false, have_shared_ops = false;
  for (int64_t i = 0; i < a.n_layers; ++i) {
    const std::string owner = "layers." + std::to_string(i);
    BlockBuffers b{};
    if (ac.recomputes_block(i)) {  // blocks that recompute everything share one set
      if (!have_recomputed) {
        elementwise(recomputed, "recomputed");
        kept(recomputed, "recomputed");
        recomputed.proj = shared_proj;
        have_recomputed = true;
      }
      p.blocks.push_back(recomputed);
      continue;
    }
    if (ac.recomputes_selected_ops()) {
      if (!have_shared_ops) {  // recomputed in each block's backward: one set for all
        elementwise(shared_ops, "shared");
        shared_ops.k = add("shared.k", n * kvd);
        shared_ops.a3 = add("shared.a3", n * f);
        shared_ops.proj = shared_proj;
        have_shared_ops = true;
      }
      b = shared_ops;
      b.q = add(owner + ".q", n * qd);
      b.v = add(owner + ".v", n * kvd);
      b.att = add(owner + ".att", n * qd);
      b.lse = add(owner + ".lse", lse, true);
      b.a1 = add(owner + ".a1", n * f);
    } else {
      kept(b, owner);
      elementwise(b, owner);
      b.proj = shared_proj;
    }
    p.blocks.push_back(b);
  }
  p.backward = {add("backward.dxn", n * d), add("backward.d_att", n * qd), add("backward.dq", n * qd),
                add("backward.dk", n * kvd),  add("backward.dv", n * kvd),     add("backward.dg", n * f),
                add("backward.da1", n * f),   add("backward.da3", n * f)};
  p.final_out = add("final_norm.out", n * d);
  p.final_rstd = add("final_norm.rstd", rows, true);
  p.d_hidden = add("d_hidden", n * d);
  p.d_resid = add("d_resid", rows * d);
  if (tp > 1) {
    p.norm_shard = add("tp.norm_shard", rows * d);
    p.partial = add("tp.partial", n * d);
    p.d_full = add("tp.d_full", n * d);
  }
  p.rope_cos = add("rope.cos", s.seq * (a.head_dim() / 2), true);
  p.rope_sin = add("rope.sin", s.seq * (a.head_dim() / 2), true);
  return p;
}

}  // namespace titan::llama3
