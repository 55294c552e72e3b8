// Token-by-token inference with a KV cache, for `titan generate`: each new token runs through
// the model's own blocks once (Model::decode), attending to the cached keys and values of
// everything before it.
#pragma once
#include <cstdint>
#include <vector>

#include "titan/models/llama3/transformer.h"

namespace titan::llama3 {

class KvCacheDecoder {
 public:
  // Reads the model's full weights; holds caches for `max_len` positions.
  KvCacheDecoder(Transformer& model, int64_t max_len) : model_(model.model()), cache_(model_.make_kv_cache(max_len)) {
    logits_.resize(static_cast<size_t>(model.args().vocab_size));
  }
  // Feeds one token at the next position; returns the logits [vocab] for the token after it.
  const std::vector<float>& step(int32_t token) {
    model_.decode(token, cache_, logits_.data());
    return logits_;
  }
  int64_t position() const { return cache_.position; }
  int64_t max_len() const { return cache_.max_len; }

 private:
  Model& model_;
  KvCache cache_;
  std::vector<float> logits_;
};

}  // namespace titan::llama3
