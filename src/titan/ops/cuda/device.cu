#include "titan/ops/cuda/cuda_check.h"
#include "titan/ops/cuda/cuda_ops.h"

namespace titan::cuda {

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return n;
}

std::string device_name(int device) {
  cudaDeviceProp prop{};
  TITAN_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  return prop.name;
}

size_t device_total_memory() {
  size_t free_b = 0, total_b = 0;
  TITAN_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  return total_b;
}

}  // namespace titan::cuda
