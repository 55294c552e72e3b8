// Global gradient-norm clipping over every parameter's grad shard.
#pragma once
#include <deque>
#include <vector>

#include "titan/core/parameter.h"

namespace titan::optim {

// Sum of squares of this rank's grad shards, in a fixed order (double accumulation). The
// data-parallel layer all-reduces it across ranks before the sqrt.
// `skip` (when given): parameters left out, by position (tensor parallel counts a replicated
// tensor on one rank of its group).
double grad_sq_sum(const std::deque<Parameter>& params, const std::vector<bool>* skip = nullptr);
// Scales every grad by max_norm / (norm + 1e-6) when norm > max_norm (torch's rule).
void clip_grads(std::deque<Parameter>& params, double total_norm, double max_norm);

}  // namespace titan::optim
