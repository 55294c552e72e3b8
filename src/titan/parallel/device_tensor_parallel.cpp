#include "titan/parallel/device_tensor_parallel.h"

#include "titan/core/error.h"

namespace titan::parallel {

namespace {
const cuda::bf16* bf(const void* p) { return static_cast<const cuda::bf16*>(p); }
cuda::bf16* bf(void* p) { return static_cast<cuda::bf16*>(p); }
}  // namespace

DeviceTensorParallel::DeviceTensorParallel(cuda::DeviceCollectives& group, cudaStream_t stream,
                                           const llama3::ModelLayout& layout)
    : group_(group), stream_(stream) {
  TITAN_CHECK(layout.tensor_parallel().degree == group.size() && layout.tensor_parallel().rank == group.rank(),
              "a layout for tensor parallel rank ", layout.tensor_parallel().rank, " of ", layout.tensor_parallel().degree,
              " on device collectives' rank ", group.rank(), " of ", group.size());
  for (const auto& t : layout.tensors()) replicated_.push_back(t.tp == llama3::TpStyle::replicate);
}

void DeviceTensorParallel::gather_rows(const void* shard, void* whole, int64_t rows, int64_t width) {
  group_.all_gather_bf16(bf(shard), bf(whole), rows * width, stream_);
  volume_.all_gather += 2.0 * double(degree() - 1) * double(rows * width);
}

void DeviceTensorParallel::reduce_scatter_rows(const void* whole, void* shard, int64_t rows, int64_t width) {
  group_.reduce_scatter_bf16(bf(whole), bf(shard), rows * width, stream_);
  volume_.reduce_scatter += 2.0 * double(degree() - 1) * double(rows * width);
}

void DeviceTensorParallel::gather_stats(const double* mine, double* all, int64_t count) {
  const int64_t bytes = count * static_cast<int64_t>(sizeof(double));
  group_.all_gather_bytes(mine, all, bytes, stream_);
  volume_.all_gather += double(degree() - 1) * double(bytes);
}

void DeviceTensorParallel::gather_logits(const void* mine, void* all, int64_t count) {
  group_.all_gather_bf16(bf(mine), bf(all), count, stream_);
  volume_.all_gather += 2.0 * double(degree() - 1) * double(count);
}

void DeviceTensorParallel::reduce_replicated_gradients(cuda::DeviceParameters& params) {
  TITAN_CHECK(params.count() == replicated_.size(), params.count(), " device parameters for a layout of ",
              replicated_.size());
  const double share = 2.0 * (degree() - 1) / degree();
  group_.group_start();
  try {
    for (size_t i = 0; i < replicated_.size(); ++i) {
      if (!replicated_[i]) continue;
      group_.all_reduce_f32(params.gradients() + params.offset(i), params.shard_elements(i), stream_);
      volume_.all_reduce += share * 4.0 * double(params.shard_elements(i));
    }
  } catch (...) {
    try {  // close the group; the first error is the one to report
      group_.group_end();
    } catch (...) {
    }
    throw;
  }
  group_.group_end();
}

CommVolume DeviceTensorParallel::take_volume() {
  const CommVolume v = volume_;
  volume_ = {};
  return v;
}

}  // namespace titan::parallel
