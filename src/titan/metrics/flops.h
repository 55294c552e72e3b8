// torchtitan's FLOP count: 6 * (params - embedding) + 12 * layers * heads * head_dim * seq per
// token (forward + backward, attention counted as if not causal).
#pragma once
#include <cstdint>
#include <string>

#include "titan/models/llama3/model_args.h"

namespace titan::metrics {

int64_t parameter_count(const llama3::ModelArgs& a);
int64_t embedding_parameter_count(const llama3::ModelArgs& a);
double flops_per_token(const llama3::ModelArgs& a, int64_t seq_len);
// Dense bf16 peak FLOP/s of a GPU from its name (H100, H200, A100, B200); 0 when unknown.
double peak_bf16_flops(const std::string& device_name);

}  // namespace titan::metrics
