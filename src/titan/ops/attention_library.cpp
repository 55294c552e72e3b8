#include "titan/ops/attention_library.h"

#include <string>

#include "titan/core/env.h"
#include "titan/core/error.h"

namespace titan {

AttentionLibrary attention_library_from_env() {
  const std::string word = env_word("TITAN_ATTENTION_IMPL", {"titan", "cudnn", "auto"}, "auto");
  return word == "cudnn" ? AttentionLibrary::cudnn : word == "auto" ? AttentionLibrary::automatic : AttentionLibrary::titan;
}

bool cudnn_attention_takes(int64_t seq, int64_t heads, int64_t kv_heads, int64_t head_dim) {
  return (head_dim == 64 || head_dim == 128) && seq > 0 && seq % 128 == 0 && kv_heads > 0 && heads % kv_heads == 0;
}

size_t cudnn_dq_accumulator_bytes(int64_t batch, int64_t seq, int64_t heads, int64_t head_dim) {
  return static_cast<size_t>(batch * heads * seq * head_dim) * sizeof(float);
}

size_t cudnn_attention_scratch_bytes(int64_t batch, int64_t seq, int64_t heads, int64_t head_dim) {
  const size_t accumulator = (cudnn_dq_accumulator_bytes(batch, seq, heads, head_dim) + 15) / 16 * 16;
  return accumulator + static_cast<size_t>(batch * heads * seq) * sizeof(float);
}

}  // namespace titan
