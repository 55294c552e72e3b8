// Sizes the fixed-order reductions use, shared by their kernels and the host-side sizing of
// their scratch (host_plan.h); plain C++17, so the .cu files include it too.
#pragma once
#include <cstdint>

namespace titan::cuda {

constexpr int64_t kRmsnormRowsPerChunk = 128;  // rows per partial sum of an RMSNorm weight gradient
constexpr int64_t kReduceBlocks = 1056;        // blocks of the fixed-order sums (ops/cuda/reduce.cu)

}  // namespace titan::cuda
