// torchtitan's initialisation rules, as a pure function of (seed, parameter name, index).
#pragma once
#include <cstdint>

#include "titan/core/parameter.h"
#include "titan/models/llama3/model_args.h"

namespace titan::llama3 {

struct InitRule {
  enum Kind { normal, truncated_normal, ones } kind = normal;
  float std = 1.0f;
  float bound = 0.0f;  // absolute truncation bound (truncated_normal only)
};

// The rule for a parameter by its fully-qualified name (the layout table holds the rules).
InitRule init_rule(const std::string& name, const ModelArgs& args);
// Fills p.master (this rank's shard) so element i equals element global_index(i) of the
// whole parameter initialised on one rank.
void init_parameter(Parameter& p, const InitRule& rule, uint64_t seed);

}  // namespace titan::llama3
