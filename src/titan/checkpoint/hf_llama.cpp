#include "titan/checkpoint/hf_llama.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>
#include <xxhash.h>

#include "titan/checkpoint/safetensors.h"
#include "titan/core/dtype.h"
#include "titan/core/error.h"
#include "titan/models/llama3/layout.h"

namespace titan::checkpoint {

namespace fs = std::filesystem;
using nlohmann::json;

std::string hf_name(const std::string& n) { return llama3::hf_name_of(n); }

void permute_rope_rows(const float* in, float* out, int64_t heads, int64_t head_dim, int64_t cols, bool to_hf) {
  const int64_t half = head_dim / 2;
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t i = 0; i < half; ++i)
      for (int64_t j = 0; j < 2; ++j) {
        const int64_t meta = h * head_dim + 2 * i + j, hf = h * head_dim + j * half + i;
        const int64_t src = to_hf ? meta : hf, dst = to_hf ? hf : meta;
        std::copy_n(in + src * cols, cols, out + dst * cols);
      }
}

namespace {
bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
}  // namespace

void write_hf_weights(const std::string& dir, std::map<std::string, StTensor> tensors, int64_t max_shard_bytes);

void export_hf(const std::deque<Parameter>& params, const llama3::ModelArgs& a, const std::string& dir, bool bf16,
               int32_t bos_id, int32_t eos_id, int64_t max_shard_bytes) {
  for (const auto& p : params)  // a model that cannot run is not exported
    if (const int64_t i = first_nonfinite(p.master.f32(), p.master.numel()); i >= 0)
      throw UserError(concat(dir, ": not exported: weight ", p.name, " holds a value that is not finite (",
                             p.master.f32()[i], " at element ", i, ")"));
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw UserError(concat(dir, ": cannot create: ", ec.message()));
  std::map<std::string, StTensor> tensors;
  const llama3::ModelLayout layout(a);
  TITAN_CHECK(params.size() == layout.size(), "export: ", params.size(), " parameters, the layout has ", layout.size());
  size_t index = 0;
  for (const auto& p : params) {
    const llama3::TensorSpec& spec = layout[index++];
    TITAN_CHECK(p.world == 1 && p.name == spec.name, "export needs whole parameters in the layout's order");
    const int64_t n = p.numel();
    std::vector<float> w(p.master.f32(), p.master.f32() + n);
    if (spec.rope_heads > 0) permute_rope_rows(p.master.f32(), w.data(), spec.rope_heads, a.head_dim(), a.dim, true);
    StTensor t;
    t.dtype = bf16 ? "BF16" : "F32";
    t.shape = p.global_shape;
    t.data.resize(static_cast<size_t>(n) * (bf16 ? 2 : 4));
    if (bf16) {
      auto* out = reinterpret_cast<uint16_t*>(t.data.data());
      for (int64_t i = 0; i < n; ++i) out[i] = f32_to_bf16(w[i]);
    } else {
      std::memcpy(t.data.data(), w.data(), t.data.size());
    }
    tensors.emplace(spec.hf_name, std::move(t));
  }
  write_hf_weights(dir, std::move(tensors), max_shard_bytes);
  const json config = {{"architectures", {"LlamaForCausalLM"}},
                       {"model_type", "llama"},
                       {"hidden_size", a.dim},
                       {"intermediate_size", a.ffn_hidden()},
                       {"num_hidden_layers", a.n_layers},
                       {"num_attention_heads", a.n_heads},
                       {"num_key_value_heads", a.n_kv_heads},
                       {"head_dim", a.head_dim()},
                       {"vocab_size", a.vocab_size},
                       {"rms_norm_eps", std::stod(std::to_string(a.norm_eps * 1e6)) / 1e6},  // 1e-05, not 9.99999975e-06
                       {"rope_theta", a.rope_theta},
                       {"max_position_embeddings", a.max_seq_len},
                       {"hidden_act", "silu"},
                       {"attention_bias", false},
                       {"mlp_bias", false},
                       {"rope_scaling", a.rope_scaling.factor > 0
                                          ? json{{"rope_type", "llama3"},
                                                 {"factor", a.rope_scaling.factor},
                                                 {"low_freq_factor", a.rope_scaling.low_freq_factor},
                                                 {"high_freq_factor", a.rope_scaling.high_freq_factor},
                                                 {"original_max_position_embeddings", a.rope_scaling.original_max_positions}}
                                          : json(nullptr)},
                       {"tie_word_embeddings", a.tie_word_embeddings},
                       {"bos_token_id", bos_id >= 0 ? json(bos_id) : json(nullptr)},
                       {"eos_token_id", eos_id >= 0 ? json(eos_id) : json(nullptr)},
                       {"torch_dtype", bf16 ? "bfloat16" : "float32"}};
  std::ofstream((fs::path(dir) / "config.json").string()) << config.dump(2) << "\n";
}

void export_hf_tokenizer(const std::string& dir, const std::string& path, const data::Tokenizer& tok) {
  std::string text = path.empty() ? std::string(data::default_tokenizer_text()) : std::string();
  if (!path.empty()) {
    std::ifstream in(path, std::ios::binary);
    std::ostringstream all;
    all << in.rdbuf();
    if (!in) throw UserError(concat(path, ": cannot read the tokenizer to export it beside the weights"));
    text = all.str();
  }
  auto write = [&](const fs::path& file, const std::string& body) {
    std::error_code ec;
    fs::create_directories(file.parent_path(), ec);
    std::ofstream out(file.string(), std::ios::binary | std::ios::trunc);
    out << body;
    if (!out) throw UserError(concat(file.string(), ": cannot write"));
  };
  const bool hf_json = text.find_first_not_of(" \t\r\n") != std::string::npos && text[text.find_first_not_of(" \t\r\n")] == '{';
  if (!hf_json) {
    write(fs::path(dir) / "original" / "tokenizer.model", text);
    return;
  }
  write(fs::path(dir) / "tokenizer.json", text);
  auto name_of = [&](int32_t id) -> json {
    for (const auto& [name, special] : tok.special_tokens())
      if (special == id) return name;
    return nullptr;
  };
  const json config = {{"tokenizer_class", "PreTrainedTokenizerFast"},
                       {"bos_token", name_of(tok.bos_id())},
                       {"eos_token", name_of(tok.eos_id())},
                       {"clean_up_tokenization_spaces", false}};
  write(fs::path(dir) / "tokenizer_config.json", config.dump(2) + "\n");
}

namespace {
// Hugging Face's rope_scaling: null, or rope_type "llama3" with its four numbers (Llama 3.1+).
// Any other type would change positions in a way titan does not compute: refused.
cpu::RopeScaling rope_scaling_of(const json& c, const std::string& config_path) {
  if (!c.contains("rope_scaling") || c["rope_scaling"].is_null()) return {};
  const json& s = c["rope_scaling"];
  const std::string type = s.is_object() ? s.value("rope_type", s.value("type", std::string("none"))) : "not an object";
  if (type != "llama3")
    throw UserError(concat(config_path, ": rope_scaling: rope_type ", type,
                           " is not supported (titan computes Llama 3.1's \"llama3\" frequency scaling only)"));
  cpu::RopeScaling r;
  try {
    r = {s.at("factor").get<double>(), s.at("low_freq_factor").get<double>(), s.at("high_freq_factor").get<double>(),
         s.at("original_max_position_embeddings").get<int64_t>()};
  } catch (const json::exception& e) {
    throw UserError(concat(config_path, ": rope_scaling: expected factor, low_freq_factor, high_freq_factor and "
                           "original_max_position_embeddings as numbers (", e.what(), ")"));
  }
  llama3::ModelArgs check;
  check.rope_scaling = r;
  check.validate(config_path + ": rope_scaling");
  return r;
}
}  // namespace

// One model.safetensors when everything fits in max_shard_bytes (or that is 0); else shards of at
// most that size, in the layout's order, named as Meta publishes them
// (model-00001-of-00004.safetensors) with model.safetensors.index.json mapping each tensor.
void write_hf_weights(const std::string& dir, std::map<std::string, StTensor> tensors, int64_t max_shard_bytes) {
  // An earlier export's files would outlive this one's (an import prefers an index): they go first.
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("model", 0) == 0 && (ends_with(name, ".safetensors") || name == "model.safetensors.index.json"))
      fs::remove(e.path(), ec);
  }
  int64_t total = 0;
  for (const auto& [name, t] : tensors) total += static_cast<int64_t>(t.data.size());
  if (max_shard_bytes <= 0 || total <= max_shard_bytes) {
    write_safetensors((fs::path(dir) / "model.safetensors").string(), tensors, {{"format", "pt"}});
    return;
  }
  std::vector<std::map<std::string, StTensor>> shards(1);
  int64_t in_shard = 0;
  for (auto& [name, t] : tensors) {
    const auto bytes = static_cast<int64_t>(t.data.size());
    if (in_shard > 0 && in_shard + bytes > max_shard_bytes) {
      shards.emplace_back();
      in_shard = 0;
    }
    in_shard += bytes;
    shards.back().emplace(name, std::move(t));
  }
  json weight_map = json::object();
  char file[64];
  for (size_t i = 0; i < shards.size(); ++i) {
    std::snprintf(file, sizeof file, "model-%05zu-of-%05zu.safetensors", i + 1, shards.size());
    for (const auto& [name, t] : shards[i]) weight_map[name] = file;
    write_safetensors((fs::path(dir) / file).string(), shards[i], {{"format", "pt"}});
  }
  const json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
  std::ofstream((fs::path(dir) / "model.safetensors.index.json").string()) << index.dump(2) << "\n";
}

HfModel read_hf_config(const std::string& dir) {
  const std::string config_path = (fs::path(dir) / "config.json").string();
  std::ifstream in(config_path);
  if (!in) throw UserError(concat(config_path, ": missing (expected a Hugging Face Llama folder)"));
  json c;
  try {
    c = json::parse(in);
  } catch (const json::exception& e) {
    throw UserError(concat(config_path, ": invalid JSON: ", e.what()));
  }
  auto refuse = [&](const std::string& key, const std::string& why) {
    throw UserError(concat(config_path, ": ", key, ": ", why));
  };
  if (!c.is_object()) throw UserError(concat(config_path, ": expected a JSON object, found ", c.type_name()));
  if (c.value("model_type", "") != "llama") refuse("model_type", "expected llama, found " + c.value("model_type", std::string("none")));

  if (c.value("attention_bias", false) || c.value("mlp_bias", false)) refuse("attention_bias/mlp_bias", "Llama 3 has no biases");
  if (c.value("hidden_act", "silu") != "silu") refuse("hidden_act", "expected silu");
  HfModel m;
  try {
    const int64_t dim = c.at("hidden_size"), layers = c.at("num_hidden_layers"), heads = c.at("num_attention_heads");
    const int64_t kv = c.value("num_key_value_heads", heads), inter = c.at("intermediate_size"), vocab = c.at("vocab_size");
    const cpu::RopeScaling scaling = rope_scaling_of(c, config_path);
    const bool tied = c.value("tie_word_embeddings", false);
    for (const auto& name : llama3::flavor_names()) {  // of the same shape, the one with the same RoPE scaling
      llama3::ModelArgs f = llama3::flavor(name);
      const bool shape = f.dim == dim && f.n_layers == layers && f.n_heads == heads && f.n_kv_heads == kv &&
                         f.ffn_hidden() == inter;
      if (shape && (m.flavor.empty() || (f.rope_scaling == scaling && f.tie_word_embeddings == tied))) {
        m.args = f;
        m.flavor = name;
      }
    }
    if (m.flavor.empty())
      throw UserError(concat(config_path, ": no titan flavor has this shape (hidden_size ", dim, ", layers ", layers, ", heads ",
                             heads, ", kv heads ", kv, ", intermediate_size ", inter, ")"));
    m.args.vocab_size = vocab;
    m.args.rope_scaling = scaling;  // the config's, whichever flavor names the shape
    m.args.tie_word_embeddings = tied;
    m.args.rope_theta = c.value("rope_theta", 10000.0);
    m.args.norm_eps = c.value("rms_norm_eps", 1e-5f);
    if (!(m.args.rope_theta > 0) || !std::isfinite(m.args.rope_theta))
      refuse("rope_theta", concat("expected a positive number, found ", c["rope_theta"].dump()));
    if (!(m.args.norm_eps > 0) || !std::isfinite(m.args.norm_eps))
      refuse("rms_norm_eps", concat("expected a positive number, found ", c["rms_norm_eps"].dump()));
    if (c.contains("head_dim") && !c["head_dim"].is_null() && c["head_dim"].get<int64_t>() != dim / heads)
      refuse("head_dim", concat("expected hidden_size / num_attention_heads = ", dim / heads, " (titan's Llama), found ",
                                c["head_dim"].dump()));
  } catch (const json::exception& e) {
    throw UserError(concat(config_path, ": ", e.what()));
  }

  return m;
}

HfModel import_hf(const std::string& dir) {
  HfModel m = read_hf_config(dir);
  for_each_hf_weight(dir, m.args, [&](const llama3::TensorSpec& spec, std::vector<float>& w) {
    m.weights.emplace(spec.name, std::move(w));
  });
  return m;
}

// The weight files in the order Meta names them: the index's, or the one model.safetensors.
std::vector<std::string> hf_weight_files(const std::string& dir) {
  std::vector<std::string> files;
  const fs::path index = fs::path(dir) / "model.safetensors.index.json";
  if (!fs::exists(index)) return {(fs::path(dir) / "model.safetensors").string()};
  std::ifstream ii(index);
  std::set<std::string> unique;
  try {
    // The parsed index must outlive the loop: a range-for keeps only its last temporary alive.
    const json parsed = json::parse(ii);
    for (const auto& [k, f] : parsed.at("weight_map").items()) unique.insert(f.get<std::string>());
  } catch (const json::exception& e) {
    throw UserError(concat(index.string(), ": ", e.what()));
  }
  for (const auto& f : unique) files.push_back((fs::path(dir) / f).string());
  return files;
}

void for_each_hf_weight(const std::string& dir, const llama3::ModelArgs& a,
                        const std::function<void(const llama3::TensorSpec&, std::vector<float>&)>& sink) {
  const llama3::ModelLayout layout(a);
  std::map<std::string, const llama3::TensorSpec*> wanted;  // by HF name
  for (const auto& spec : layout.tensors()) wanted.emplace(spec.hf_name, &spec);
  // A tied export may also store lm_head.weight: compared with the embedding by hash, as either
  // may come first and neither should be held twice.
  uint64_t tied_head = 0, embedding = 0;
  std::string tied_head_file;
  auto hash = [](const std::vector<float>& w) { return XXH3_64bits(w.data(), w.size() * sizeof(float)); };
  // One file at a time, one tensor converted at a time: a rank holds one shard's bytes and one
  // fp32 tensor, not the whole model twice.
  for (const auto& file : hf_weight_files(dir)) {
    auto tensors = read_safetensors(file);
    for (auto& [key, t] : tensors) {
      auto it = wanted.find(key);
      if (it == wanted.end()) {
        // Some tied exports keep lm_head.weight too; it must then be the embedding, which titan uses.
        if (a.tie_word_embeddings && key == "lm_head.weight") {
          tied_head = hash(to_f32(t, key));
          tied_head_file = file;
        } else if (!ends_with(key, "rotary_emb.inv_freq")) {  // RoPE's cache, recomputed; anything else would be dropped
          throw UserError(concat(file, ": tensor ", key, " is not part of a Llama 3 model of this shape (it would be dropped)"));
        }
        continue;
      }
      const llama3::TensorSpec& spec = *it->second;
      if (t.shape != spec.shape)
        throw UserError(concat(file, ": tensor ", key, " has shape ", shape_str(t.shape), ", expected ", shape_str(spec.shape)));
      std::vector<float> w = to_f32(t, key);
      t.data = {};  // the raw bytes go as soon as they are converted
      if (spec.rope_heads > 0) {
        std::vector<float> meta(w.size());
        permute_rope_rows(w.data(), meta.data(), spec.rope_heads, a.head_dim(), a.dim, false);
        w = std::move(meta);
      }
      if (a.tie_word_embeddings && spec.role == llama3::Role::tok_embeddings) embedding = hash(w);
      sink(spec, w);
      wanted.erase(it);
    }
  }
  if (!wanted.empty()) throw UserError(concat(dir, ": missing tensor ", wanted.begin()->first));
  if (!tied_head_file.empty() && tied_head != embedding)
    throw UserError(concat(tied_head_file, ": tie_word_embeddings is true but lm_head.weight differs from model.embed_tokens.weight"));
}

}  // namespace titan::checkpoint
