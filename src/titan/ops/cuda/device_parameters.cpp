#include "titan/ops/cuda/device_parameters.h"

#include "titan/core/error.h"
#include "titan/ops/cuda/cuda_check.h"

namespace titan::cuda {

DeviceParameters::DeviceParameters(const std::deque<Parameter>& params, const std::vector<bool>& accumulated,
                                   DeviceAllocator& alloc, cudaStream_t stream, bool sharded)
    : stream_(stream), force_sharded_(sharded) {
  TITAN_CHECK(accumulated.size() == params.size(), "accumulated flags for ", accumulated.size(), " of ",
              params.size(), " parameters");
  world_ = params.empty() ? 1 : params.front().world;
  rank_ = params.empty() ? 0 : params.front().rank;
  for (const auto& p : params) {
    TITAN_CHECK(p.world == world_ && p.rank == rank_, p.name, " is a shard of rank ", p.rank, " of ", p.world,
                ", the others of rank ", rank_, " of ", world_);
    local_.push_back(p.master.numel());
    shard_.push_back((p.global_shape[0] + world_ - 1) / world_ * p.row_elems());
  }
  layout_ = flat_layout(shard_);
  for (size_t i = 0; i < params.size(); ++i) {
    if (!accumulated[i]) continue;
    const int64_t begin = layout_.offset[i], end = i + 1 < params.size() ? layout_.offset[i + 1] : layout_.total;
    if (!accumulated_.empty() && accumulated_.back().second == begin) accumulated_.back().second = end;
    else accumulated_.push_back({begin, end});
  }
  const size_t f32 = static_cast<size_t>(layout_.total) * sizeof(float);
  master_ = DeviceBuffer(alloc, f32);
  grad_ = DeviceBuffer(alloc, f32);
  exp_avg_ = DeviceBuffer(alloc, f32);
  exp_avg_sq_ = DeviceBuffer(alloc, f32);
  weights_ = DeviceBuffer(alloc, static_cast<size_t>(layout_.total) * sizeof(bf16));
  for (auto* b : {&master_, &grad_, &exp_avg_, &exp_avg_sq_, &weights_})
    TITAN_CUDA_CHECK(cudaMemsetAsync(b->as<void>(), 0, b->bytes(), stream_));  // alignment gaps stay zero
  upload(params);
}

const void* DeviceParameters::weight(size_t i) {
  TITAN_CHECK(!sharded(), "FSDP: weights are read through the unit store");
  return weights_.as<bf16>() + layout_.offset[i];
}

const float* DeviceParameters::master(size_t i) {
  return sharded() ? nullptr : master_.as<float>() + layout_.offset[i];
}

float* DeviceParameters::grad(size_t i) {
  TITAN_CHECK(!sharded(), "FSDP: gradients are written through the unit store");
  return grad_.as<float>() + layout_.offset[i];
}

void DeviceParameters::upload(const std::deque<Parameter>& params) {
  size_t i = 0;
  for (const auto& p : params) {
    const size_t bytes = static_cast<size_t>(local_[i]) * sizeof(float);  // shard padding stays zero
    const int64_t at = layout_.offset[i++];
    TITAN_CUDA_CHECK(cudaMemcpyAsync(master_.as<float>() + at, p.master.f32(), bytes, cudaMemcpyHostToDevice, stream_));
    TITAN_CUDA_CHECK(cudaMemcpyAsync(exp_avg_.as<float>() + at, p.exp_avg.f32(), bytes, cudaMemcpyHostToDevice, stream_));
    TITAN_CUDA_CHECK(cudaMemcpyAsync(exp_avg_sq_.as<float>() + at, p.exp_avg_sq.f32(), bytes, cudaMemcpyHostToDevice, stream_));
  }
  cast_f32_to_bf16(master_.as<float>(), weights_.as<bf16>(), layout_.total, stream_);
  TITAN_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void DeviceParameters::download(std::deque<Parameter>& params) {
  size_t i = 0;
  for (auto& p : params) {
    const size_t bytes = static_cast<size_t>(local_[i]) * sizeof(float);
    const int64_t at = layout_.offset[i++];
    TITAN_CUDA_CHECK(cudaMemcpyAsync(p.master.f32(), master_.as<float>() + at, bytes, cudaMemcpyDeviceToHost, stream_));
    TITAN_CUDA_CHECK(cudaMemcpyAsync(p.exp_avg.f32(), exp_avg_.as<float>() + at, bytes, cudaMemcpyDeviceToHost, stream_));
    TITAN_CUDA_CHECK(cudaMemcpyAsync(p.exp_avg_sq.f32(), exp_avg_sq_.as<float>() + at, bytes, cudaMemcpyDeviceToHost, stream_));
  }
  TITAN_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void DeviceParameters::zero_grad() { TITAN_CUDA_CHECK(cudaMemsetAsync(grad_.as<void>(), 0, grad_.bytes(), stream_)); }

void DeviceParameters::zero_accumulated_grads() {
  // One micro-batch: each weight's GEMM writes its gradient once (beta 0), so only the gradients
  // that are summed into are cleared, not the whole fp32 buffer (6 GB for 1B).
  for (const auto& [begin, end] : accumulated_)
    TITAN_CUDA_CHECK(cudaMemsetAsync(grad_.as<float>() + begin, 0, static_cast<size_t>(end - begin) * sizeof(float), stream_));
}

void DeviceParameters::grad_sq_sum(double* out, double* scratch) {
  sum_squares_f32(grad_.as<float>(), layout_.total, out, scratch, stream_);
}

double DeviceParameters::grad_sq_sum_except(const std::vector<bool>& skip, double* partials, double* scratch) {
  TITAN_CHECK(skip.size() == count(), "a skip list of ", skip.size(), " for ", count(), " parameters");
  const size_t n = count();
  int runs = 0;
  for (size_t i = 0; i < n;) {
    if (skip[i]) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < n && !skip[j]) ++j;
    const int64_t begin = layout_.offset[i], end = j < n ? layout_.offset[j] : layout_.total;  // alignment pads are zero
    sum_squares_f32(grad_.as<float>() + begin, end - begin, partials + runs++, scratch, stream_);
    i = j;
  }
  std::vector<double> host(static_cast<size_t>(runs));
  if (runs > 0)
    TITAN_CUDA_CHECK(cudaMemcpyAsync(host.data(), partials, host.size() * sizeof(double), cudaMemcpyDeviceToHost, stream_));
  TITAN_CUDA_CHECK(cudaStreamSynchronize(stream_));
  double sum = 0;
  for (const double v : host) sum += v;
  return sum;
}

void DeviceParameters::adamw(const AdamWStep& step) {
  cuda::adamw(master_.as<float>(), grad_.as<float>(), exp_avg_.as<float>(), exp_avg_sq_.as<float>(), weights_.as<bf16>(),
              layout_.total, step, stream_);
}

void DeviceParameters::adamw_device_step(const AdamWStep* step, const double* grad_sq_sum, const double* loss_sum,
                                         double max_norm) {
  cuda::adamw_device_step(master_.as<float>(), grad_.as<float>(), exp_avg_.as<float>(), exp_avg_sq_.as<float>(),
                          weights_.as<bf16>(), layout_.total, step, grad_sq_sum, loss_sum, max_norm, stream_);
}

std::vector<float> DeviceParameters::gradient(size_t i) {
  std::vector<float> out(static_cast<size_t>(local_.at(i)));
  TITAN_CUDA_CHECK(cudaMemcpyAsync(out.data(), grad_.as<float>() + layout_.offset[i], out.size() * sizeof(float), cudaMemcpyDeviceToHost, stream_));
  TITAN_CUDA_CHECK(cudaStreamSynchronize(stream_));
  return out;
}

}  // namespace titan::cuda
