#include "titan/checkpoint/model_signature.h"

#include <nlohmann/json.hpp>

#include "titan/core/error.h"

namespace titan::checkpoint {

using nlohmann::json;

std::string model_signature(const llama3::ModelArgs& a, const std::string& flavor, const std::string& tokenizer) {
  json j = {{"flavor", flavor},           {"dim", a.dim},
            {"n_layers", a.n_layers},     {"n_heads", a.n_heads},
            {"n_kv_heads", a.n_kv_heads}, {"vocab_size", a.vocab_size},
            {"multiple_of", a.multiple_of}, {"ffn_hidden", a.ffn_hidden()},
            {"rope_theta", a.rope_theta}, {"norm_eps", a.norm_eps},
            {"tokenizer", tokenizer},     {"dtype", "float32"}};
  if (a.ffn_dim_multiplier) j["ffn_dim_multiplier"] = *a.ffn_dim_multiplier;
  if (a.tie_word_embeddings) j["tie_word_embeddings"] = true;  // absent when untied, as rope_scaling
  if (a.rope_scaling.factor > 0)  // absent without scaling: older checkpoints' signatures stay equal
    j["rope_scaling"] = {{"factor", a.rope_scaling.factor},
                         {"low_freq_factor", a.rope_scaling.low_freq_factor},
                         {"high_freq_factor", a.rope_scaling.high_freq_factor},
                         {"original_max_position_embeddings", a.rope_scaling.original_max_positions}};
  return j.dump();
}

llama3::ModelArgs args_from_signature(const std::string& signature, const std::string& where) {
  try {
    const json j = json::parse(signature);
    llama3::ModelArgs a;
    a.dim = j.at("dim");
    a.n_layers = j.at("n_layers");
    a.n_heads = j.at("n_heads");
    a.n_kv_heads = j.at("n_kv_heads");
    a.vocab_size = j.at("vocab_size");
    a.multiple_of = j.at("multiple_of");
    if (j.contains("ffn_dim_multiplier")) a.ffn_dim_multiplier = j["ffn_dim_multiplier"].get<double>();
    a.rope_theta = j.at("rope_theta");
    a.norm_eps = j.at("norm_eps");
    a.tie_word_embeddings = j.value("tie_word_embeddings", false);
    if (j.contains("rope_scaling")) {
      const json& s = j["rope_scaling"];
      a.rope_scaling = {s.at("factor"), s.at("low_freq_factor"), s.at("high_freq_factor"),
                        s.at("original_max_position_embeddings")};
    }
    a.validate(where);
    if (a.ffn_hidden() != j.at("ffn_hidden").get<int64_t>()) throw UserError(concat(where, ": inconsistent ffn_hidden"));
    return a;
  } catch (const json::exception& e) {
    throw UserError(concat(where, ": malformed model signature: ", e.what()));
  }
}

}  // namespace titan::checkpoint
