// The CUDA backend's sizing, computable without a GPU (compiled in every build): the caching
// allocator's block sizes, the scratch the backend keeps per pass shape, where each parameter
// lives in the flat device buffers, and whether a step runs eagerly or as CUDA graphs.
// `titan estimate`, the deviceless tests and the backend itself read these, so what the
// estimate counts is what the backend allocates.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "titan/ops/backend.h"
#include "titan/ops/classifier_plan.h"
#include "titan/ops/cuda/reduction_sizes.h"
#include "titan/ops/cuda/scale_span.h"

namespace titan::cuda {

constexpr int64_t kParameterAlign = 64;        // elements: every flat parameter 128-byte aligned in bf16

// Bytes the caching allocator hands out for a request (ops/cuda/allocator.cpp rounds so).
size_t device_block_bytes(size_t bytes);

struct ScratchBuffer {
  std::string name;
  size_t bytes = 0;
};
// What CudaBackend::prepare allocates for passes of these dimensions, in this order: 11 buffers
// always, 5 with float8 linears, 2 under tensor parallel.
std::vector<ScratchBuffer> backend_scratch(const PassDims& dims, ClassifierBudget budget = {});
// The float8 casts' buffers (appended to `out`).
void add_float8_scratch(const PassDims& dims, std::vector<ScratchBuffer>& out);
// Rows per group of the classifier without loss parallel (its logits gathered whole).
int64_t gathered_logits_rows(const PassDims& dims, ClassifierBudget budget = {});

// `elements` rounded up to the parameter alignment.
int64_t aligned_elements(int64_t elements);
// Offsets of parameters of `numel` elements each in one flat buffer, each aligned.
struct FlatLayout {
  std::vector<int64_t> offset;
  int64_t total = 0;
};
FlatLayout flat_layout(const std::vector<int64_t>& numel);

// How the executor runs a step: captured CUDA graphs need training.compile and nothing that
// reads the step op by op (profiling.phase_times); `why` says which when eager.
enum class StepMode { eager, graphs };
StepMode step_mode(bool compile, bool phase_times, std::string* why = nullptr);

}  // namespace titan::cuda
