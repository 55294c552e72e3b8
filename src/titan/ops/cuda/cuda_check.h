// Every CUDA call and launch checked: failures throw InternalError naming file and line.
#pragma once
#include <cuda_runtime.h>

#include "titan/core/error.h"

namespace titan::cuda {

inline void check(cudaError_t status, const char* what, const char* file, int line) {
  if (status != cudaSuccess)
    throw InternalError(concat(file, ":", line, ": ", what, ": ", cudaGetErrorName(status), ": ",
                               cudaGetErrorString(status)));
}

}  // namespace titan::cuda

#define TITAN_CUDA_CHECK(call) ::titan::cuda::check((call), #call, __FILE__, __LINE__)
// After a kernel launch: catches bad launch configurations at once.
#define TITAN_CUDA_CHECK_LAUNCH() ::titan::cuda::check(cudaGetLastError(), "kernel launch", __FILE__, __LINE__)
