#include "titan/models/llama3/transformer.h"

#include "titan/models/llama3/init.h"

namespace titan::llama3 {

namespace {
std::deque<Parameter> make_parameters(const ModelLayout& layout, int rank, int world) {
  std::deque<Parameter> params;
  for (const auto& t : layout.tensors()) {
    TensorSlice slice;
    if (t.sliced()) slice = {t.whole_shape, t.row_offset, t.col_offset};
    params.push_back(make_parameter(t.name, t.shape, rank, world, slice));
  }
  return params;
}
}  // namespace

Transformer::Transformer(const ModelArgs& args, int rank, int world, TensorParallelRank tp)
    : args_(args),
      layout_((args.validate("model"), args), tp),
      params_(make_parameters(layout_, rank, world)),
      model_(args, backend_, weights_, tp) {}

Parameter& Transformer::parameter(const std::string& name) {
  const int64_t i = layout_.find(name);
  if (i < 0) throw InternalError("no parameter named " + name);
  return params_[static_cast<size_t>(i)];
}

std::vector<std::vector<Parameter*>> Transformer::units() {
  std::vector<std::vector<Parameter*>> out;
  for (const auto& unit : layout_.unit_tensors()) {
    auto& members = out.emplace_back();
    for (size_t i : unit) members.push_back(&params_[i]);
  }
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

MemoryReport Transformer::memory() const {
  MemoryReport r;
  for (const auto& p : params_) {
    r.parameters += shape_numel(p.whole_shape());
    r.parameter_bytes += p.master.bytes();
    r.gradient_bytes += p.grad.bytes();
    r.optimizer_bytes += p.exp_avg.bytes() + p.exp_avg_sq.bytes();
  }
  r.embedding_parameters = shape_numel(params_[layout_.root_index(Role::tok_embeddings)].whole_shape());
  r.activation_bytes = backend_.live_bytes();  // the plan's buffers and the backend's scratch
  return r;
}

}  // namespace titan::llama3
