#include "titan/models/llama3/init.h"

#include <cmath>
#include <string>

#include "titan/core/rng.h"

namespace titan::llama3 {

namespace {
bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

int64_t layer_id(const std::string& name) {
  // "layers.<id>.…"
  size_t start = name.find('.') + 1;
  return std::stoll(name.substr(start, name.find('.', start) - start));
}
}  // namespace

InitRule init_rule(const std::string& name, const ModelArgs& args) {
  if (name == "tok_embeddings.weight") return {InitRule::normal, 1.0f, 0.0f};
  if (ends_with(name, "norm.weight")) return {InitRule::ones, 0.0f, 0.0f};
  if (name == "output.weight") {
    float std = 1.0f / std::sqrt(static_cast<float>(args.dim));
    return {InitRule::truncated_normal, std, 3.0f * std};
  }
  if (ends_with(name, "wq.weight") || ends_with(name, "wk.weight") || ends_with(name, "wv.weight") ||
      ends_with(name, "w1.weight"))
    return {InitRule::truncated_normal, 0.02f, 2.0f};
  if (ends_with(name, "wo.weight") || ends_with(name, "w2.weight") || ends_with(name, "w3.weight")) {
    // depth_init: deeper layers start smaller.
    float std = 0.02f / std::sqrt(2.0f * static_cast<float>(layer_id(name) + 1));
    return {InitRule::truncated_normal, std, 2.0f};
  }
  throw InternalError("no init rule for parameter " + name);
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
