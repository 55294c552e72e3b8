// Where a tensor-parallel model hands its activations to the collectives applied from outside
// (parallel/tensor_parallel.h), as FSDP acts through module_hooks.h. The model only says where
// a parallel region starts and ends: sequence parallel's all-gather of the rows before a
// column-wise linear, the reduce-scatter of a row-wise linear's partial sums after one, and
// loss parallel's exchange of each row's statistics over the vocabulary's slices.
#pragma once
#include <cstdint>

namespace titan {

// Loss parallel: the classifier's per-row statistics meet across the ranks that each hold a
// slice of the vocabulary, without the logits ever being gathered.
class VocabShards {
 public:
  virtual ~VocabShards() = default;
  virtual int degree() const = 0;
  // Every rank's `count` values into `all` (degree() x count), rank 0's first.
  virtual void gather_stats(const double* mine, double* all, int64_t count) = 0;
};

class TensorParallelHooks : public VocabShards {
 public:
  // Buffers are the backend's, of its compute dtype; every rank holds `rows` of the rows, in
  // rank order. whole: all rows (rows x degree()) of `width`.
  virtual void gather_rows(const void* shard, void* whole, int64_t rows, int64_t width) = 0;
  // Sums every rank's partial `whole` and keeps this rank's rows of the sum in `shard`.
  virtual void reduce_scatter_rows(const void* whole, void* shard, int64_t rows, int64_t width) = 0;
};

}  // namespace titan
