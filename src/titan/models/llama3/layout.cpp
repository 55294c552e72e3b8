#include "titan/models/llama3/layout.h"

#include <cmath>

#include "titan/core/error.h"

namespace titan::llama3 {

namespace {
struct RoleNames {
  Role role;
  const char* titan;  // after "layers.N." for block roles
  const char* hf;     // after "model.layers.N." for block roles
};
// The naming of every role, the one place titan's and Hugging Face's names meet.
constexpr RoleNames kNames[] = {
    {Role::wq, "attention.wq.weight", "self_attn.q_proj.weight"},
    {Role::wk, "attention.wk.weight", "self_attn.k_proj.weight"},
    {Role::wv, "attention.wv.weight", "self_attn.v_proj.weight"},
    {Role::wo, "attention.wo.weight", "self_attn.o_proj.weight"},
    {Role::w1, "feed_forward.w1.weight", "mlp.gate_proj.weight"},
    {Role::w2, "feed_forward.w2.weight", "mlp.down_proj.weight"},
    {Role::w3, "feed_forward.w3.weight", "mlp.up_proj.weight"},
    {Role::attention_norm, "attention_norm.weight", "input_layernorm.weight"},
    {Role::ffn_norm, "ffn_norm.weight", "post_attention_layernorm.weight"},
    {Role::tok_embeddings, "tok_embeddings.weight", "model.embed_tokens.weight"},
    {Role::norm, "norm.weight", "model.norm.weight"},
    {Role::output, "output.weight", "lm_head.weight"},
};
const RoleNames& names(Role r) { return kNames[static_cast<int>(r)]; }

// torchtitan's rules (REFERENCE.md): embedding N(0, 1); wq/wk/wv/w1 std 0.02; wo/w2/w3 depth-
// scaled std 0.02 / sqrt(2 (layer + 1)); norms 1; output std dim^-0.5 truncated at 3 std.
InitRule rule(Role r, int64_t layer, const ModelArgs& a) {
  switch (r) {
    case Role::tok_embeddings: return {InitRule::normal, 1.0f, 0.0f};
    case Role::attention_norm:
    case Role::ffn_norm:
    case Role::norm: return {InitRule::ones, 0.0f, 0.0f};
    case Role::output: {
      const float std = 1.0f / std::sqrt(static_cast<float>(a.dim));
      return {InitRule::truncated_normal, std, 3.0f * std};
    }
    case Role::wq:
    case Role::wk:
    case Role::wv:
    case Role::w1: return {InitRule::truncated_normal, 0.02f, 2.0f};
    case Role::wo:
    case Role::w2:
    case Role::w3: return {InitRule::truncated_normal, 0.02f / std::sqrt(2.0f * static_cast<float>(layer + 1)), 2.0f};
  }
  throw InternalError("no init rule for a role");
}

TpStyle tp_style(Role r) {
  switch (r) {
    case Role::wq: case Role::wk: case Role::wv: case Role::w1: case Role::w3: case Role::output: return TpStyle::colwise;
    case Role::wo: case Role::w2: return TpStyle::rowwise;
    case Role::tok_embeddings: return TpStyle::vocab;
    default: return TpStyle::replicate;
  }
}

Shape shape_of(Role r, const ModelArgs& a) {
  const int64_t d = a.dim, q = a.n_heads * a.head_dim(), kv = a.kv_dim(), f = a.ffn_hidden();
  switch (r) {
    case Role::wq: return {q, d};
    case Role::wk: case Role::wv: return {kv, d};
    case Role::wo: return {d, q};
    case Role::w1: case Role::w3: return {f, d};
    case Role::w2: return {d, f};
    case Role::attention_norm: case Role::ffn_norm: case Role::norm: return {d};
    case Role::tok_embeddings: case Role::output: return {a.vocab_size, d};
  }
  throw InternalError("no shape for a role");
}
}  // namespace

namespace {
// This rank's block of the whole tensor under its style.
void slice_for(TensorSpec& t, TensorParallelRank tp) {
  t.whole_shape = t.shape;
  if (tp.degree == 1 || t.tp == TpStyle::replicate) return;
  const int dim = t.tp == TpStyle::rowwise ? 1 : 0;
  TITAN_CHECK(t.shape[dim] % tp.degree == 0, t.name, ": dimension ", dim, " of ", t.shape[dim],
              " does not split over tensor parallel degree ", tp.degree);
  t.shape[dim] /= tp.degree;
  (dim == 0 ? t.row_offset : t.col_offset) = t.shape[dim] * tp.rank;
}
}  // namespace

ModelLayout::ModelLayout(const ModelArgs& a, TensorParallelRank tp) : tp_(tp), n_layers_(a.n_layers) {
  TITAN_CHECK(tp.degree >= 1 && tp.rank >= 0 && tp.rank < tp.degree, "tensor parallel rank ", tp.rank, " of ", tp.degree);
  auto add = [&](Role r, int64_t layer) {
    TensorSpec t;
    const bool block = layer >= 0;
    const std::string prefix = block ? "layers." + std::to_string(layer) + "." : "";
    t.name = prefix + names(r).titan;
    t.hf_name = (block ? "model." + prefix : std::string()) + names(r).hf;
    t.shape = shape_of(r, a);
    t.role = r;
    t.layer = layer;
    t.unit = block ? static_cast<int>(layer) + 1 : 0;
    t.init = rule(r, layer, a);
    t.rope_heads = r == Role::wq ? a.n_heads : r == Role::wk ? a.n_kv_heads : 0;
    t.tp = tp_style(r);
    slice_for(t, tp);
    t.precision = t.shape.size() == 2 && r != Role::tok_embeddings ? LinearPrecision::high : LinearPrecision::none;
    t.summed_gradient = r == Role::tok_embeddings || t.shape.size() == 1;
    tensors_.push_back(std::move(t));
    return tensors_.size() - 1;
  };
  embedding_ = add(Role::tok_embeddings, -1);
  for (int64_t l = 0; l < a.n_layers; ++l) {
    auto& slots = block_.emplace_back();
    for (int r = 0; r < kBlockRoles; ++r) slots[r] = add(static_cast<Role>(r), l);
  }
  norm_ = add(Role::norm, -1);
  // Tied (Llama 3.2 1B/3B): the classifier reads the embedding's tensor, whose gradient then sums
  // both uses; it takes the output's init, scaled for the classifier.
  if (a.tie_word_embeddings) {
    output_ = embedding_;
    tensors_[embedding_].init = rule(Role::output, -1, a);
  } else {
    output_ = add(Role::output, -1);
  }
}

void ModelLayout::set_precision(size_t i, LinearPrecision p) {
  TITAN_CHECK(i < tensors_.size() && tensors_[i].precision != LinearPrecision::none && p != LinearPrecision::none,
              "precision of tensor ", i, ": not a GEMM weight");
  tensors_[i].precision = p;
}

size_t ModelLayout::block_index(int64_t layer, Role role) const {
  TITAN_CHECK(layer >= 0 && layer < n_layers_ && static_cast<int>(role) < kBlockRoles, "no block tensor at layer ",
              layer, " role ", static_cast<int>(role));
  return block_[static_cast<size_t>(layer)][static_cast<size_t>(role)];
}

size_t ModelLayout::root_index(Role role) const {
  switch (role) {
    case Role::tok_embeddings: return embedding_;
    case Role::norm: return norm_;
    case Role::output: return output_;
    default: throw InternalError("not a root role");
  }
}

std::vector<std::vector<size_t>> ModelLayout::unit_tensors() const {
  std::vector<std::vector<size_t>> out(static_cast<size_t>(units()));
  for (size_t i = 0; i < tensors_.size(); ++i) out[static_cast<size_t>(tensors_[i].unit)].push_back(i);
  return out;
}

int64_t ModelLayout::find(const std::string& name) const {
  for (size_t i = 0; i < tensors_.size(); ++i)
    if (tensors_[i].name == name) return static_cast<int64_t>(i);
  return -1;
}

int64_t ModelLayout::numel() const {
  int64_t n = 0;
  for (const auto& t : tensors_) n += t.numel();
  return n;
}

int64_t ModelLayout::unit_numel(int unit) const {
  int64_t n = 0;
  for (const auto& t : tensors_) n += t.unit == unit ? t.numel() : 0;
  return n;
}

std::string hf_name_of(const std::string& n) {
  for (const auto& r : kNames)
    if (static_cast<int>(r.role) >= kBlockRoles && n == r.titan) return r.hf;
  // "layers.<digits>.<rest>"
  if (n.rfind("layers.", 0) != 0) return "";
  const size_t dot = n.find('.', 7);
  if (dot == std::string::npos || dot == 7 || n.find_first_not_of("0123456789", 7) != dot) return "";
  const std::string id = n.substr(7, dot - 7), rest = n.substr(dot + 1);
  for (const auto& r : kNames)
    if (static_cast<int>(r.role) < kBlockRoles && rest == r.titan) return "model.layers." + id + "." + r.hf;
  return "";
}

}  // namespace titan::llama3
