#include "titan/models/llama3/float8_linears.h"

#include <map>

#include "titan/core/error.h"

namespace titan::llama3 {

namespace {
// torchtitan filters modules; a weight's module is its name without ".weight".
std::string module_name(const std::string& tensor_name) {
  const std::string suffix = ".weight";
  return tensor_name.size() > suffix.size() && tensor_name.ends_with(suffix)
           ? tensor_name.substr(0, tensor_name.size() - suffix.size())
           : tensor_name;
}
}  // namespace

Float8Linears select_float8_linears(const ModelLayout& layout, const float8::Recipe& recipe,
                                    const std::vector<std::string>& filter_fqns) {
  Float8Linears f{recipe, {}, {}};
  for (size_t i = 0; i < layout.size(); ++i) {
    const TensorSpec& t = layout[i];
    if (t.precision == LinearPrecision::none) continue;
    const std::string module = module_name(t.name);
    std::string why;
    for (const auto& filter : filter_fqns)
      if (!filter.empty() && module.find(filter) != std::string::npos) why = concat("float8.filter_fqns has \"", filter, "\"");
    if (why.empty() && (t.shape[0] % 16 != 0 || t.shape[1] % 16 != 0))
      why = concat("shape ", t.shape[0], " x ", t.shape[1], " is not a multiple of 16");
    if (why.empty() && t.role == Role::output) why = "the fused classifier has no float8 path";
    if (why.empty()) f.converted.push_back(i);
    else f.kept.push_back(concat(module, ": ", why));
  }
  return f;
}

std::string describe(const Float8Linears& f, const ModelLayout& layout) {
  size_t gemm_weights = 0;
  for (const auto& t : layout.tensors()) gemm_weights += t.precision != LinearPrecision::none;
  std::string out = concat("float8: ", f.converted.size(), " of ", gemm_weights, " linears in float8 (recipe ",
                           f.recipe.name, ")");
  // Many layers keep the same linears for the same reason: name each reason once, with a count.
  std::map<std::string, std::vector<std::string>> by_reason;
  for (const auto& k : f.kept) {
    const auto colon = k.find(": ");
    by_reason[k.substr(colon + 2)].push_back(k.substr(0, colon));
  }
  for (const auto& [why, modules] : by_reason)
    out += concat("; high precision: ", modules.size() == 1 ? modules[0] : concat(modules.size(), " linears (", modules[0], ", ...)"),
                  " (", why, ")");
  return out;
}

}  // namespace titan::llama3
