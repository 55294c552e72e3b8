#include "titan/ops/cuda/allocator.h"

#include "titan/ops/cuda/host_plan.h"

#include <cuda_runtime.h>

#include <algorithm>

#include "titan/core/error.h"
#include "titan/ops/cuda/cuda_check.h"

namespace titan::cuda {

namespace {
double gib(size_t b) { return static_cast<double>(b) / (1024.0 * 1024.0 * 1024.0); }
}  // namespace

size_t DeviceAllocator::round_up(size_t bytes) { return device_block_bytes(bytes); }

DeviceAllocator::~DeviceAllocator() {
  empty_cache();
  for (auto& [p, size] : in_use_) cudaFree(p);  // buffers that outlive us: free them anyway
}

void* DeviceAllocator::allocate(size_t bytes) {
  const size_t size = round_up(bytes);
  void* p = nullptr;
  if (auto it = cached_.lower_bound(size); it != cached_.end() && it->first <= size + size / 8) {
    p = it->second;
    const size_t block = it->first;
    cached_.erase(it);
    in_use_[p] = block;
    stats_.active += block;
    stats_.peak_active = std::max(stats_.peak_active, stats_.active);
    return p;
  }
  cudaError_t st = cudaMalloc(&p, size);
  if (st == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();
    ++stats_.alloc_retries;
    empty_cache();
    st = cudaMalloc(&p, size);
  }
  if (st == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();
    ++stats_.ooms;
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    throw UserError(concat("out of GPU memory: asked for ", gib(size), " GiB with ", gib(stats_.active),
                           " GiB in use and ", gib(free_b), " GiB free of ", gib(total_b),
                           " (lower training.batch_size or training.seq_len)"));
  }
  TITAN_CUDA_CHECK(st);
  in_use_[p] = size;
  stats_.active += size;
  stats_.reserved += size;
  stats_.peak_active = std::max(stats_.peak_active, stats_.active);
  stats_.peak_reserved = std::max(stats_.peak_reserved, stats_.reserved);
  return p;
}

void DeviceAllocator::release(void* p) {
  auto it = in_use_.find(p);
  TITAN_CHECK(it != in_use_.end(), "release of a pointer this allocator did not hand out");
  stats_.active -= it->second;
  cached_.emplace(it->second, p);
  in_use_.erase(it);
}

void DeviceAllocator::empty_cache() {
  if (cached_.empty()) return;
  TITAN_CUDA_CHECK(cudaDeviceSynchronize());  // a cached block may still be read by queued work
  for (auto& [size, p] : cached_) {
    cudaFree(p);
    stats_.reserved -= size;
  }
  cached_.clear();
}

}  // namespace titan::cuda
