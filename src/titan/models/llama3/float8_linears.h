// Which linears run in float8: torchtitan's module filter applied to the layout table, from
// outside the model (as torchtitan's float8 converter swaps modules). A linear stays in high
// precision when its name contains an entry of float8.filter_fqns, or when a dimension is not
// a multiple of 16 (FP8 tensor cores take none other; torchtitan skips those too). The output
// projection stays in high precision always: titan's classifier is fused (logits in row groups,
// cross-entropy in place), and that op has no float8 path.
#pragma once
#include <string>
#include <vector>

#include "titan/models/llama3/layout.h"
#include "titan/ops/float8.h"

namespace titan::llama3 {

struct Float8Linears {
  float8::Recipe recipe;
  std::vector<size_t> converted;      // layout positions of the float8 weights
  std::vector<std::string> kept;      // "name: why", the GEMM weights left in high precision
};

Float8Linears select_float8_linears(const ModelLayout& layout, const float8::Recipe& recipe,
                                    const std::vector<std::string>& filter_fqns);

// One log line: the recipe, how many linears run in float8, which stay in high precision and why.
std::string describe(const Float8Linears& f, const ModelLayout& layout);

}  // namespace titan::llama3
