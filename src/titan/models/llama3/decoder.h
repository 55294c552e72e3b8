// Token-by-token inference with a KV cache, for `titan generate`: each new token runs through
// the blocks once, attending to the cached keys and values of everything before it.
#pragma once
#include <cstdint>
#include <vector>

#include "titan/models/llama3/transformer.h"

namespace titan::llama3 {

class KvCacheDecoder {
 public:
  // Reads the model's full weights; holds caches for `max_len` positions.
  KvCacheDecoder(Transformer& model, int64_t max_len);
  // Feeds one token at the next position; returns the logits [vocab] for the token after it.
  const std::vector<float>& step(int32_t token);
  int64_t position() const { return pos_; }
  int64_t max_len() const { return max_len_; }

 private:
  Transformer& m_;
  const ModelArgs& a_;
  int64_t max_len_, pos_ = 0;
  Tensor cos_, sin_;
  std::vector<std::vector<float>> k_cache_, v_cache_;  // per layer [max_len, kv_dim]
  std::vector<float> x_, xn_, q_, k_, v_, att_, o_, h_, a1_, a3_, g_, scores_, logits_;
  std::vector<float> rstd_;
};

}  // namespace titan::llama3
