#include "titan/core/parameter.h"

#include <algorithm>

namespace titan {

ShardRange shard_range(int64_t rows, int rank, int world) {
  TITAN_CHECK(world >= 1 && rank >= 0 && rank < world, "rank ", rank, " of world ", world);
  int64_t chunk = (rows + world - 1) / world;
  int64_t begin = std::min(rows, rank * chunk);
  return {begin, std::min(rows, begin + chunk)};
}

Parameter make_parameter(std::string name, Shape global_shape, int rank, int world) {
  TITAN_CHECK(!global_shape.empty(), "parameter ", name, " has no dimensions");
  Parameter p;
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
