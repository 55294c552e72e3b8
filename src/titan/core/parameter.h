// A trainable parameter as FSDP sees it: a global shape, this rank's dim-0 shard (torch.chunk
// rows), fp32 master and grad shards, AdamW moments of the shard, and the full compute weight
// the model reads. At world size 1 the full weight and grad alias the shard: no copies.
#pragma once
#include <string>

#include "titan/core/tensor.h"

namespace titan {

// Rows [begin, end) of dim 0 held by `rank` of `world`, as torch.chunk splits them: chunks of
// ceil(rows / world), the last ones shorter or empty.
struct ShardRange {
  int64_t begin = 0, end = 0;
  int64_t rows() const { return end - begin; }
};
ShardRange shard_range(int64_t rows, int rank, int world);

// Where the tensor a rank's FSDP shards (its `global_shape`) sits in the model's whole tensor:
// under tensor parallel a block of rows (column-wise, vocabulary) or of columns (row-wise);
// without it the whole tensor itself (`whole` empty).
struct TensorSlice {
  Shape whole;
  int64_t row_offset = 0, col_offset = 0;
  bool partial() const { return !whole.empty(); }
};

struct Parameter {
  std::string name;  // torchtitan's fully-qualified name, e.g. layers.3.attention.wq.weight
  Shape global_shape;   // the tensor FSDP shards: the whole tensor, or this rank's TP slice of it
  TensorSlice slice;    // where global_shape sits in the whole tensor
  int rank = 0, world = 1;
  ShardRange rows;      // this rank's dim-0 rows
  Tensor master;        // fp32 [rows.rows(), global_shape[1:]...]
  Tensor grad;          // fp32, same shape as master
  Tensor exp_avg;       // AdamW first moment of the shard
  Tensor exp_avg_sq;    // AdamW second moment of the shard
  Tensor full;          // the whole weight the model computes with
  Tensor full_grad;     // the whole weight's gradient, before reduce-scatter
  // > 0: FSDP gathered `full` as e4m3 cast with this tensorwise scale (FP8 all-gather), and
  // `full` holds those values dequantised; 0: `full` is the weight itself.
  float full_float8_scale = 0;

  int64_t numel() const { return shape_numel(global_shape); }
  int64_t row_elems() const { return global_shape.size() > 1 ? numel() / global_shape[0] : 1; }
  // The whole tensor's shape (global_shape without tensor parallel).
  const Shape& whole_shape() const { return slice.partial() ? slice.whole : global_shape; }
  // Flat index in the whole tensor of local shard element i (layout-invariant init).
  int64_t global_index(int64_t i) const;
};

// Allocates the shard state of one parameter for `rank` of `world`; `slice`: the block of the
// whole tensor `global_shape` is (tensor parallel).
Parameter make_parameter(std::string name, Shape global_shape, int rank = 0, int world = 1, TensorSlice slice = {});

}  // namespace titan
