// Where a tensor-parallel model hands its activations to the collectives applied from outside
// (parallel/tensor_parallel.h), as FSDP acts through module_hooks.h. The model only says where
// a parallel region starts and ends: sequence parallel's all-gather of the rows before a
// column-wise linear, the reduce-scatter of a row-wise linear's partial sums after one, and
// loss parallel's exchange of each row's statistics over the vocabulary's slices.
#pragma once
#include <cstdint>

namespace titan {

// The classifier over ranks that each hold a slice of the vocabulary: with loss parallel the
// per-row statistics meet, the logits never gathered; without it (torchtitan's
// disable_loss_parallel) every rank gathers the whole logits of each group of rows.
class VocabShards {
 public:
  virtual ~VocabShards() = default;
  virtual int degree() const = 0;
  // Every rank's `count` values into `all` (degree() x count), rank 0's first. Both buffers are
  // the backend's (host memory on the CPU, device memory on a GPU).
  virtual void gather_stats(const double* mine, double* all, int64_t count) = 0;
  // Without loss parallel: every rank's logits (`count` elements of the backend's compute
  // dtype each) the same way.
  virtual void gather_logits(const void* mine, void* all, int64_t count) = 0;
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
