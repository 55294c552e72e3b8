// Where a float8 operand's scales run (one for the tensor, per row, per column), and how many:
// host code shared by the CUDA kernels (C++17), the backend and titan estimate.
#pragma once
#include <cstdint>

#include "titan/ops/float8.h"

namespace titan::cuda {

enum class ScaleSpan { tensor, rows, columns };
ScaleSpan scale_span(const float8::Cast& cast, float8::Axis axis);
int64_t scale_count(ScaleSpan span, int64_t rows, int64_t cols);

}  // namespace titan::cuda
