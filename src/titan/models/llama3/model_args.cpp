#include "titan/models/llama3/model_args.h"

#include <cmath>

#include <map>

#include "titan/core/error.h"

namespace titan::llama3 {

int64_t ModelArgs::ffn_hidden() const {
  int64_t h = static_cast<int64_t>(2 * 4 * dim / 3);
  if (ffn_dim_multiplier) h = static_cast<int64_t>(*ffn_dim_multiplier * static_cast<double>(h));
  return (h + multiple_of - 1) / multiple_of * multiple_of;
}

void ModelArgs::validate(const std::string& where) const {
  auto need = [&](bool ok, const std::string& what) {
    if (!ok) throw UserError(concat(where, ": ", what));
  };
  need(dim > 0 && n_layers > 0 && n_heads > 0 && n_kv_heads > 0 && vocab_size > 0 && multiple_of > 0,
       "dim, n_layers, n_heads, n_kv_heads, vocab_size and multiple_of must be positive");
  need(dim % n_heads == 0, concat("dim ", dim, " is not divisible by n_heads ", n_heads));
  need(n_heads % n_kv_heads == 0,
       concat("n_heads ", n_heads, " is not divisible by n_kv_heads ", n_kv_heads));
  need(head_dim() % 2 == 0, concat("head_dim ", head_dim(), " must be even for RoPE"));
  need(!ffn_dim_multiplier || *ffn_dim_multiplier > 0, "ffn_dim_multiplier must be positive");
  need(vocab_size <= 2147483647, "vocab_size must fit in int32 token ids");
  const auto& s = rope_scaling;
  need(s.factor == 0 || (s.factor >= 1 && std::isfinite(s.factor)), concat("rope scaling factor ", s.factor, " must be 0 (none) or at least 1"));
  need(s.factor == 0 || (s.low_freq_factor > 0 && s.high_freq_factor > s.low_freq_factor && s.original_max_positions > 0),
       concat("rope scaling needs 0 < low_freq_factor (", s.low_freq_factor, ") < high_freq_factor (", s.high_freq_factor,
              ") and original_max_position_embeddings (", s.original_max_positions, ") > 0"));
}

namespace {
const std::map<std::string, ModelArgs>& flavors() {
  static const std::map<std::string, ModelArgs> table = [] {
    std::map<std::string, ModelArgs> t;
    ModelArgs debug;  // defaults are the debug model
    t["debugmodel"] = debug;
    ModelArgs debug_gqa = debug;  // grouped-query attention at debug size: 4 query heads per KV head
    debug_gqa.n_kv_heads = 4;
    t["debugmodel_gqa"] = debug_gqa;
    auto big = [](int64_t dim, int64_t layers, int64_t heads, double mult, int64_t multiple_of) {
      ModelArgs a;
      a.dim = dim;
      a.n_layers = layers;
      a.n_heads = heads;
      a.n_kv_heads = 8;
      a.ffn_dim_multiplier = mult;
      a.multiple_of = multiple_of;
      a.vocab_size = 128256;
      a.max_seq_len = 8192;
      return a;
    };
    t["1B"] = big(2048, 16, 32, 1.5, 256);
    t["8B"] = big(4096, 32, 32, 1.3, 1024);
    t["70B"] = big(8192, 80, 64, 1.3, 4096);
    t["405B"] = big(16384, 126, 128, 1.2, 4096);
    // Benchmark shapes of REFERENCE.md's GPU table (torch_anchor.py's llama3_150m and llama3_8b_4l).
    ModelArgs small = big(768, 12, 12, 1.0, 256);
    small.n_kv_heads = 4;
    small.ffn_dim_multiplier.reset();  // ffn hidden int(8 * 768 / 3) = 2048
    t["150M"] = small;
    // Llama 3.1 (Meta's config.json): the same shapes with RoPE scaling for 128K positions.
    for (const char* size : {"8B", "70B", "405B"}) {
      ModelArgs a = t[size];
      a.rope_scaling = {8.0, 1.0, 4.0, 8192};
      a.max_seq_len = 131072;
      t[std::string("llama3.1-") + size] = a;
    }
    // Llama 3.2 1B and 3B (Meta's config.json): tied embeddings, RoPE scaling factor 32.
    for (auto [name, shape] : {std::pair{"llama3.2-1B", t["1B"]}, std::pair{"llama3.2-3B", big(3072, 28, 24, 1.0, 256)}}) {
      shape.tie_word_embeddings = true;
      shape.rope_scaling = {32.0, 1.0, 4.0, 8192};
      shape.max_seq_len = 131072;
      t[name] = shape;
    }
    ModelArgs eight_b_slice = t["8B"];
    eight_b_slice.n_layers = 4;
    t["8B_4layers"] = eight_b_slice;
    return t;
  }();
  return table;
}
}  // namespace

ModelArgs flavor(const std::string& name) {
  auto it = flavors().find(name);
  if (it == flavors().end()) {
    std::string known;
    for (const auto& n : flavor_names()) known += (known.empty() ? "" : ", ") + n;
    throw UserError(concat("model.flavor = " + name + ": unknown flavor (expected one of: ", known, ")"));
  }
  return it->second;
}

std::vector<std::string> flavor_names() {
  std::vector<std::string> names;
  for (const auto& [n, _] : flavors()) names.push_back(n);
  return names;
}

}  // namespace titan::llama3
