#include "titan/parallel/tensor_parallel.h"

#include "titan/core/error.h"
#include "titan/optim/grad_clip.h"

namespace titan::parallel {

TensorParallel::TensorParallel(ProcessGroup& group, const llama3::ModelLayout& layout) : group_(group) {
  TITAN_CHECK(layout.tensor_parallel().degree == group.size() && layout.tensor_parallel().rank == group.rank(),
              "a layout for tensor parallel rank ", layout.tensor_parallel().rank, " of ", layout.tensor_parallel().degree,
              " on rank ", group.rank(), " of ", group.size());
  for (const auto& t : layout.tensors()) replicated_.push_back(t.tp == llama3::TpStyle::replicate);
}

void TensorParallel::gather_rows(const void* shard, void* whole, int64_t rows, int64_t width) {
  const std::vector<int64_t> counts(static_cast<size_t>(degree()), rows * width);
  group_.all_gather(static_cast<const float*>(shard), static_cast<float*>(whole), counts);
  volume_.all_gather += 4.0 * double(degree() - 1) * double(rows * width);
}

void TensorParallel::reduce_scatter_rows(const void* whole, void* shard, int64_t rows, int64_t width) {
  const std::vector<int64_t> counts(static_cast<size_t>(degree()), rows * width);
  group_.reduce_scatter_sum(static_cast<const float*>(whole), static_cast<float*>(shard), counts);
  volume_.reduce_scatter += 4.0 * double(degree() - 1) * double(rows * width);
}

void TensorParallel::gather_stats(const double* mine, double* all, int64_t count) {
  const int64_t bytes = count * static_cast<int64_t>(sizeof(double));
  const std::vector<int64_t> counts(static_cast<size_t>(degree()), bytes);
  group_.all_gather_bytes(reinterpret_cast<const uint8_t*>(mine), reinterpret_cast<uint8_t*>(all), counts);
  volume_.all_gather += double(degree() - 1) * double(bytes);
}

void TensorParallel::gather_logits(const void* mine, void* all, int64_t count) {
  const std::vector<int64_t> counts(static_cast<size_t>(degree()), count);
  group_.all_gather(static_cast<const float*>(mine), static_cast<float*>(all), counts);
  volume_.all_gather += 4.0 * double(degree() - 1) * double(count);
}

void TensorParallel::reduce_replicated_gradients(std::deque<Parameter>& params) {
  TITAN_CHECK(params.size() == replicated_.size(), params.size(), " parameters for a layout of ", replicated_.size());
  const double share = 2.0 * (degree() - 1) / degree();
  for (size_t i = 0; i < params.size(); ++i) {
    if (!replicated_[i]) continue;
    group_.all_reduce_sum(params[i].grad.f32(), params[i].grad.numel());
    volume_.all_reduce += share * 4.0 * double(params[i].grad.numel());
  }
}

double TensorParallel::grad_sq(const std::deque<Parameter>& params) {
  std::vector<bool> skip(params.size(), false);
  if (rank() != 0) skip = replicated_;
  double sq = optim::grad_sq_sum(params, &skip);
  group_.all_reduce_sum(&sq, 1);
  return sq;
}

CommVolume TensorParallel::take_volume() {
  const CommVolume v = volume_;
  volume_ = {};
  return v;
}

double TensorParallel::analytic_volume(const llama3::ModelArgs& a, llama3::BatchShape s,
                                       const llama3::ActivationCheckpointing& ac, int degree, int64_t micro_batches,
                                       int fsdp_shards, bool loss_parallel, int activation_bytes) {
  if (degree <= 1) return 0;
  const double t = degree, rows = double(s.rows()) / t, bytes = activation_bytes;
  const double stream = (t - 1) * rows * double(a.dim) * bytes;
  double regions = 8.0 * double(a.n_layers) + 4;
  for (int64_t i = 0; i < a.n_layers; ++i)
    regions += ac.recomputes_block(i) ? 4 : ac.recomputes_selected_ops() ? 3 : 0;
  const double stats = loss_parallel ? (t - 1) * double(s.rows()) * 16 : (t - 1) * double(s.rows()) * double(a.vocab_size) / t * bytes;
  const double replicated = double((2 * a.n_layers + 1) * a.dim) / fsdp_shards;
  return double(micro_batches) * (regions * stream + stats) + 2 * (t - 1) / t * 4 * replicated;
}

void check_tensor_parallel(int degree, int world, const llama3::ModelArgs& a, llama3::BatchShape s,
                           const std::string& origin) {
  auto need = [&](int64_t value, const char* what) {
    if (value % degree != 0)
      throw UserError(concat(origin, ": training.tensor_parallel_degree = ", degree, " does not divide ", what, " (",
                             value, ")"));
  };
  if (degree < 1) throw UserError(concat(origin, ": training.tensor_parallel_degree = ", degree, ": expected 1 or more"));
  need(world, "the ranks");
  need(a.n_heads, "model.n_heads");
  need(a.n_kv_heads, "model.n_kv_heads");
  need(a.ffn_hidden(), "the feed-forward width");
  need(a.vocab_size, "model.vocab_size");
  need(s.rows(), "training.batch_size x seq_len, the rows sequence parallel splits");
}

}  // namespace titan::parallel
