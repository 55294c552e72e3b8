#include "titan/metrics/flops.h"

#include "titan/models/llama3/layout.h"

namespace titan::metrics {

int64_t parameter_count(const llama3::ModelArgs& a) { return llama3::ModelLayout(a).numel(); }

int64_t embedding_parameter_count(const llama3::ModelArgs& a) { return llama3::ModelLayout(a).embedding_numel(); }

double flops_per_token(const llama3::ModelArgs& a, int64_t seq_len) {
  const double dense = 6.0 * static_cast<double>(parameter_count(a) - embedding_parameter_count(a));
  return dense + 12.0 * static_cast<double>(a.n_layers * a.n_heads * a.head_dim() * seq_len);
}

double peak_bf16_flops(const std::string& device_name) {
  // Datasheet dense bf16 rates (REFERENCE.md); the H200 has the H100's arithmetic.
  struct Entry {
    const char* name;
    double flops;
  };
  for (const Entry& e : {Entry{"H100", 989e12}, Entry{"H200", 989e12}, Entry{"A100", 312e12}, Entry{"B200", 2.25e15}})
    if (device_name.find(e.name) != std::string::npos) return e.flops;
  return 0;
}

}  // namespace titan::metrics
