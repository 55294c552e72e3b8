// Llama 3 shapes: the named flavors of REFERENCE.md and the derived sizes.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "titan/ops/ops.h"

namespace titan::llama3 {

struct ModelArgs {
  int64_t dim = 256;
  int64_t n_layers = 6;
  int64_t n_heads = 16;
  int64_t n_kv_heads = 16;
  int64_t vocab_size = 2048;
  int64_t multiple_of = 256;
  std::optional<double> ffn_dim_multiplier;
  float norm_eps = 1e-5f;
  double rope_theta = 500000.0;
  cpu::RopeScaling rope_scaling;  // Llama 3.1+: frequency scaling (factor 0: none)
  bool tie_word_embeddings = false;  // Llama 3.2 1B/3B: the classifier uses the embedding's weight
  int64_t max_seq_len = 2048;

  int64_t head_dim() const { return dim / n_heads; }
  int64_t kv_dim() const { return n_kv_heads * head_dim(); }
  // int(2 * 4 * dim / 3), times the multiplier, rounded up to multiple_of.
  int64_t ffn_hidden() const;
  // Throws UserError (naming `where`) when the shape is inconsistent.
  void validate(const std::string& where) const;
};

// The flavor's shapes; vocab_size stays to be set from the tokenizer or config.
// Throws UserError listing the known flavors when `name` is not one.
ModelArgs flavor(const std::string& name);
std::vector<std::string> flavor_names();

}  // namespace titan::llama3
