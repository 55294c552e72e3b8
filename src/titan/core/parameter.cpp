#include "titan/core/parameter.h"

#include <algorithm>

namespace titan {

ShardRange shard_range(int64_t rows, int rank, int world) {
  TITAN_CHECK(world >= 1 && rank >= 0 && rank < world, "rank ", rank, " of world ", world);
  int64_t chunk = (rows + world - 1) / world;
  int64_t begin = std::min(rows, rank * chunk);
  return {begin, std::min(rows, begin + chunk)};
}

int64_t Parameter::global_index(int64_t i) const {
  const int64_t local = rows.begin * row_elems() + i;
  if (!slice.partial()) return local;
  const int64_t cols = global_shape.size() > 1 ? row_elems() : 1;
  const int64_t whole_cols = slice.whole.size() > 1 ? shape_numel(slice.whole) / slice.whole[0] : 1;
  return (slice.row_offset + local / cols) * whole_cols + slice.col_offset + local % cols;
}

Parameter make_parameter(std::string name, Shape global_shape, int rank, int world, TensorSlice slice) {
  TITAN_CHECK(!global_shape.empty(), "parameter ", name, " has no dimensions");
  TITAN_CHECK(!slice.partial() || slice.whole.size() == global_shape.size(), "parameter ", name, ": a slice of another rank");
  Parameter p;
  p.slice = std::move(slice);
  p.name = std::move(name);
  p.global_shape = std::move(global_shape);
  p.rank = rank;
  p.world = world;
  p.rows = shard_range(p.global_shape[0], rank, world);
  Shape local = p.global_shape;
  local[0] = p.rows.rows();
  p.master = Tensor::zeros(local);
  p.grad = Tensor::zeros(local);
  p.exp_avg = Tensor::zeros(local);
  p.exp_avg_sq = Tensor::zeros(local);
  if (world == 1) {  // with more ranks, data parallelism gathers `full` just in time
    p.full = p.master;
    p.full_grad = p.grad;
  }
  return p;
}

}  // namespace titan
