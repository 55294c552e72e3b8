#include "titan/models/llama3/init.h"

#include <string>

#include "titan/core/rng.h"
#include "titan/models/llama3/layout.h"

namespace titan::llama3 {

InitRule init_rule(const std::string& name, const ModelArgs& args) {
  const ModelLayout layout(args);
  const int64_t i = layout.find(name);
  if (i < 0) throw InternalError("no init rule for parameter " + name);
  return layout[static_cast<size_t>(i)].init;
}

void init_parameter(Parameter& p, const InitRule& rule, uint64_t seed) {
  NamedStream stream(seed, p.name);
  float* w = p.master.f32();
  const int64_t n = p.master.numel();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t g = static_cast<uint64_t>(p.global_index(i));
    switch (rule.kind) {
      case InitRule::ones: w[i] = 1.0f; break;
      case InitRule::normal: w[i] = rule.std * stream.normal(g); break;
      case InitRule::truncated_normal: w[i] = stream.truncated_normal(g, rule.std, rule.bound); break;
    }
  }
}

}  // namespace titan::llama3
