#include "titan/cli/checkpoint_commands.h"

#include <xxhash.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <numeric>
#include <optional>

#include <nlohmann/json.hpp>

#include "titan/checkpoint/checkpoint.h"
#include "titan/checkpoint/hf_llama.h"
#include "titan/checkpoint/model_signature.h"
#include "titan/cli/args.h"
#include "titan/config/job_config.h"
#include "titan/config/job_settings.h"
#include "titan/core/error.h"
#include "titan/core/rng.h"
#include "titan/data/text_source.h"
#include "titan/data/tokenizer.h"
#include "titan/data/window_source.h"
#include "titan/models/llama3/decoder.h"

namespace titan::cli {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {
// A checkpoint folder given as step-N itself or as the folder holding step-N folders (latest).
std::string resolve_step_dir(const std::string& path) {
  if (fs::exists(fs::path(path) / "metadata.json")) return path;
  const auto steps = checkpoint::list_steps(path);
  if (steps.empty()) throw UserError(concat(path, ": no titan checkpoint here (no metadata.json, no step-N folders)"));
  return (fs::path(path) / checkpoint::step_dir_name(steps.back())).string();
}

// The model of a checkpoint, weights loaded (no optimizer state).
std::unique_ptr<llama3::Transformer> load_model(const std::string& step_dir, checkpoint::Metadata& meta) {
  meta = checkpoint::read_metadata(step_dir);
  auto model = std::make_unique<llama3::Transformer>(checkpoint::args_from_signature(meta.state.model_signature, step_dir));
  checkpoint::load_parameters(step_dir, meta, model->parameters(), false);
  return model;
}
// The tokenizer file a checkpoint's run read ("" for the built-in one), as the run resolved it:
// model.tokenizer_path, else an HF folder's tokenizer.json. Nothing when the checkpoint does not
// say (converted weights, or a config this titan cannot read).
std::optional<std::string> trained_tokenizer(const checkpoint::Metadata& meta, const std::string& dir) {
  if (meta.state.config_toml.empty()) return std::nullopt;
  try {
    config::JobConfig saved;
    saved.load_string(meta.state.config_toml, dir + "/metadata.json (the run's config)");
    return config::resolve_job_settings(saved).model.tokenizer_path;
  } catch (const UserError&) {
    return std::nullopt;  // the fingerprint check still guards the choice
  }
}

// The tokenizer of a checkpoint's run, or --tokenizer's, checked against the fingerprint the
// checkpoint saved; the error names both when they differ.
struct CheckpointTokenizer {
  data::Tokenizer tokenizer;
  std::string path;  // "" for the built-in one
};
CheckpointTokenizer checkpoint_tokenizer(const checkpoint::Metadata& meta, const std::string& dir, const ParsedArgs& a) {
  const std::optional<std::string> trained_with = trained_tokenizer(meta, dir);
  const std::string path = a.get("tokenizer", trained_with.value_or(""));
  const auto name_of = [](const std::string& p) { return p.empty() ? std::string("the built-in tokenizer") : p; };
  CheckpointTokenizer out{data::Tokenizer::builtin_default(), path};
  try {
    if (!path.empty()) out.tokenizer = data::Tokenizer::load(path);
  } catch (const UserError& e) {
    if (a.has("tokenizer")) throw;
    throw UserError(concat(dir, ": the model was trained with ", path, ", which cannot be read here (", e.what(),
                           "): give its tokenizer with --tokenizer"));
  }
  const std::string saved_fp = json::parse(meta.state.model_signature).value("tokenizer", "unknown");
  if (saved_fp != "unknown" && saved_fp != "none" && saved_fp != std::to_string(out.tokenizer.fingerprint()))
    throw UserError(concat(dir, ": the model was trained with ",
                           trained_with ? name_of(*trained_with) : std::string("a tokenizer the checkpoint does not name"),
                           " (fingerprint ", saved_fp, "), not ",
                           name_of(path), " (fingerprint ", out.tokenizer.fingerprint(),
                           "): give the training's with --tokenizer"));
  return out;
}

// What the loader's saved position means, for a person: where the next window starts.
std::string describe_loader_state(const std::string& json, const std::string& where) {
  if (json.empty()) return "no position saved (a converted or seed checkpoint: training starts at the data's beginning)";
  const auto s = data::StreamState::from_json(json, where);
  const auto plural = [](int64_t n, const char* one, const char* many) { return concat(n, " ", n == 1 ? one : many); };
  return concat(plural(s.windows, "window", "windows"), " (sequences) taken so far; ",
                s.epoch == 0 ? std::string("in the first pass over the data")
                             : concat("in pass ", s.epoch + 1, " over the data (", plural(s.epoch, "pass", "passes"), " done)"),
                ", next read at file ", s.file_index, ", after ", plural(s.records, "record", "records"), " (documents) of it",
                s.carry.empty() ? std::string() : concat(", with ", plural(static_cast<int64_t>(s.carry.size()), "token", "tokens"),
                                                         " packed and not yet used"));
}

}  // namespace

int inspect_main(const std::vector<std::string>& args) {
  const bool help = !args.empty() && (args[0] == "--help" || args[0] == "-h" ||
                                      std::find(args.begin(), args.end(), "--help") != args.end() ||
                                      std::find(args.begin(), args.end(), "-h") != args.end());
  if (args.empty() || help) {
    std::cout << "usage: titan inspect CHECKPOINT [--verify] [--tensors]\n"
                 "  CHECKPOINT: a step-N folder, or a checkpoint folder (its latest step)\n";
    return args.empty() ? 2 : 0;
  }
  const auto a = parse_args({args.begin() + 1, args.end()}, {}, {"verify", "tensors"}, "inspect");
  const std::string dir = resolve_step_dir(args[0]);
  const auto meta = checkpoint::read_metadata(dir);
  std::map<std::string, int64_t> bytes_by_kind;
  std::map<std::string, std::pair<Shape, int>> tensors;
  int64_t total = 0;
  for (const auto& e : meta.shards) {
    bytes_by_kind[e.tensor.substr(0, e.tensor.find('/', e.tensor.rfind("optim/", 0) == 0 ? 6 : 0))] += e.bytes;
    tensors[e.tensor].first = e.global_shape;
    tensors[e.tensor].second += 1;
    total += e.bytes;
  }
  std::cout << "checkpoint: " << dir << "\n"
            << "step: " << meta.state.step << "\n"
            << "saved by: " << meta.world << " rank(s)\n"
            << "contents: model weights" << (meta.has_optimizer ? " + AdamW moments" : " only") << ", "
            << tensors.size() << " tensors, " << total / (1024.0 * 1024.0) << " MiB\n"
            << "model: " << meta.state.model_signature << "\n"
            << "data loader: " << describe_loader_state(meta.state.data_state, dir + "/metadata.json") << "\n";
  for (const auto& [kind, b] : bytes_by_kind) std::cout << "  " << kind << ": " << b / (1024.0 * 1024.0) << " MiB\n";
  if (a.has("tensors"))
    for (const auto& [name, v] : tensors) std::cout << "  " << name << " " << shape_str(v.first) << " in " << v.second << " shard(s)\n";
  if (a.has("verify")) {
    for (const auto& e : meta.shards) {
      const std::string path = (fs::path(dir) / checkpoint::rank_file_name(e.rank)).string();
      std::ifstream in = checkpoint::open_rank_file(path);
      std::vector<char> buf(static_cast<size_t>(e.bytes));
      in.seekg(e.offset);
      in.read(buf.data(), e.bytes);
      if (in.gcount() != e.bytes) throw UserError(concat(path, ": truncated (tensor ", e.tensor, ")"));
      if (XXH3_64bits(buf.data(), buf.size()) != e.checksum) throw UserError(concat(path, ": checksum mismatch in tensor ", e.tensor));
      // A checksum proves the bytes are as saved, not that they can train: inf/NaN are refused too.
      const auto* v = reinterpret_cast<const float*>(buf.data());
      if (const int64_t i = first_nonfinite(v, e.bytes / 4); i >= 0)
        throw UserError(concat(path, ": tensor ", e.tensor, " holds a value that is not finite (", v[i], " at element ",
                               i, " of rank ", e.rank, "'s rows)"));
    }
    std::cout << "verified: every shard's checksum matches and every value is finite\n";
  }
  return 0;
}

int convert_main(const std::vector<std::string>& args) {
  const std::string cmd = "convert";
  const bool help = std::find(args.begin(), args.end(), "--help") != args.end() ||
                    std::find(args.begin(), args.end(), "-h") != args.end();
  if (args.empty() || help) {
    std::cout << "usage:\n"
                 "  titan convert --hf HF_DIR --output CHECKPOINT_FOLDER [--tokenizer FILE]\n"
                 "      Hugging Face Llama (safetensors + config.json) -> titan checkpoint step-0 (weights only)\n"
                 "  titan convert --checkpoint CHECKPOINT --to-hf HF_DIR [--dtype float32|bfloat16] [--tokenizer FILE]\n"
                 "      titan checkpoint -> Hugging Face safetensors + config.json\n";
    return args.empty() ? 2 : 0;
  }
  const auto a = parse_args(args, {"hf", "output", "tokenizer", "checkpoint", "to-hf", "dtype"}, {}, cmd);
  if (a.values.count("hf")) {
    const std::string out = a.required("output", cmd);
    // The import becomes step-0: it must not replace a saved step-0, nor sit under later steps a
    // resume would take instead.
    std::error_code ec;
    if (fs::is_directory(out, ec))
      for (const auto& entry : fs::directory_iterator(out, ec)) {
        const std::string name = entry.path().filename().string();
        if (entry.is_directory(ec) && checkpoint::step_of_dir_name(name))
          throw UserError(concat(cmd, ": --output ", out, " already holds ", name, "; convert into an empty or new folder"));
      }
    const auto m = checkpoint::import_hf(a.required("hf", cmd));
    std::string tok_fp = "unknown";
    const std::string tok_path = a.get("tokenizer", (fs::path(a.required("hf", cmd)) / "tokenizer.json").string());
    if (fs::exists(tok_path)) {
      const auto tok = data::Tokenizer::load(tok_path);
      if (tok.vocab_size() > m.args.vocab_size)
        throw UserError(concat(cmd, ": ", tok_path, " has ", tok.vocab_size(), " ids, more than the model's vocab_size ",
                               m.args.vocab_size));
      tok_fp = std::to_string(tok.fingerprint());
    }
    llama3::Transformer model(m.args);
    for (auto& p : model.parameters()) {
      const auto& w = m.weights.at(p.name);
      std::copy(w.begin(), w.end(), p.master.f32());
    }
    const std::string final_dir = (fs::path(out) / checkpoint::step_dir_name(0)).string();
    checkpoint::Metadata meta;
    meta.has_optimizer = false;
    meta.state = {0, "", checkpoint::model_signature(m.args, m.flavor, tok_fp), ""};
    meta.shards = checkpoint::write_rank_file(final_dir + ".tmp", 0, model.parameters(), false);
    checkpoint::commit(final_dir + ".tmp", final_dir, meta);
    std::cerr << "converted " << a.required("hf", cmd) << " (titan flavor " << m.flavor << ", vocab " << m.args.vocab_size
              << ") -> " << final_dir << "\n";
    return 0;
  }
  if (a.values.count("checkpoint")) {
    checkpoint::Metadata meta;
    const std::string dir = resolve_step_dir(a.required("checkpoint", cmd));
    auto model = load_model(dir, meta);
    const std::string dtype = a.get("dtype", "float32");
    if (dtype != "float32" && dtype != "bfloat16") throw UserError(concat(cmd, ": --dtype: expected float32 or bfloat16"));
    // The run's tokenizer goes beside the weights when the checkpoint knows it (or --tokenizer names it).
    const std::string saved_fp = json::parse(meta.state.model_signature).value("tokenizer", "unknown");
    std::optional<CheckpointTokenizer> tok;
    if (a.has("tokenizer") || (saved_fp != "unknown" && saved_fp != "none" && trained_tokenizer(meta, dir)))
      tok = checkpoint_tokenizer(meta, dir, a);
    else if (saved_fp != "unknown" && saved_fp != "none")
      std::cerr << "note: " << dir << " does not name its tokenizer file: the export has none (give it with --tokenizer)\n";
    const std::string out = a.required("to-hf", cmd);
    checkpoint::export_hf(model->parameters(), model->args(), out, dtype == "bfloat16", tok ? tok->tokenizer.bos_id() : -1,
                          tok ? tok->tokenizer.eos_id() : -1);
    if (tok) checkpoint::export_hf_tokenizer(out, tok->path, tok->tokenizer);
    std::cerr << "exported " << dir << " -> " << a.required("to-hf", cmd) << "\n";
    return 0;
  }
  throw UserError(concat(cmd, ": give --hf DIR --output FOLDER, or --checkpoint PATH --to-hf DIR"));
}

int generate_main(const std::vector<std::string>& args) {
  const std::string cmd = "generate";
  const bool help = std::find(args.begin(), args.end(), "--help") != args.end() ||
                    std::find(args.begin(), args.end(), "-h") != args.end();
  if (help || args.empty()) {
    std::cout << "usage: titan generate --checkpoint PATH --prompt TEXT [--tokenizer FILE] [--max-tokens 64]\n"
                 "       [--temperature 0.8] [--top-k 0] [--top-p 1.0] [--seed 0]\n"
                 "  temperature 0 is greedy; top-k 0 and top-p 1 keep every token\n";
    return args.empty() ? 2 : 0;
  }
  const auto a = parse_args(args, {"checkpoint", "prompt", "tokenizer", "max-tokens", "temperature", "top-k", "top-p", "seed"},
                            {}, cmd);
  const std::string dir = resolve_step_dir(a.required("checkpoint", cmd));
  const int64_t max_tokens = a.get_int("max-tokens", 64, cmd), top_k = a.get_int("top-k", 0, cmd);
  const double temperature = a.get_real("temperature", 0.8, cmd), top_p = a.get_real("top-p", 1.0, cmd);
  const uint64_t seed = static_cast<uint64_t>(a.get_int("seed", 0, cmd));
  if (max_tokens <= 0) throw UserError(concat(cmd, ": --max-tokens must be positive"));
  if (temperature < 0) throw UserError(concat(cmd, ": --temperature must be >= 0"));
  if (top_k < 0) throw UserError(concat(cmd, ": --top-k must be >= 0"));
  if (!(top_p > 0 && top_p <= 1)) throw UserError(concat(cmd, ": --top-p must be in (0, 1]"));
  checkpoint::Metadata meta;
  auto model = load_model(dir, meta);
  const data::Tokenizer tok = checkpoint_tokenizer(meta, dir, a).tokenizer;
  const auto prompt = tok.encode(a.required("prompt", cmd), true, false);
  if (tok.vocab_size() > model->args().vocab_size)
    throw UserError(concat("the tokenizer has ", tok.vocab_size(), " ids, the model ", model->args().vocab_size));
  // The KV cache holds the whole context; 2^20 tokens is far past any Llama 3 context.
  const int64_t context = static_cast<int64_t>(prompt.size()) + max_tokens;
  if (context > (int64_t{1} << 20))
    throw UserError(concat(cmd, ": the prompt (", prompt.size(), " tokens) plus --max-tokens ", max_tokens,
                           " is more than 1,048,576 tokens of context"));
  llama3::KvCacheDecoder decoder(*model, context);
  const std::vector<float>* logits = nullptr;
  for (int32_t t : prompt) logits = &decoder.step(t);
  NamedStream rng(seed, "generate");
  std::vector<int32_t> out;
  std::vector<int32_t> order(model->args().vocab_size);
  std::vector<double> probs(model->args().vocab_size);
  for (int64_t i = 0; i < max_tokens; ++i) {
    const auto& z = *logits;
    if (!std::all_of(z.begin(), z.end(), [](float x) { return std::isfinite(x); }))
      throw UserError(concat(dir, ": the model's logits are not finite at generated token ", i,
                             " (the checkpoint's weights or norms are broken)"));
    int32_t next;
    if (temperature == 0) {
      next = static_cast<int32_t>(std::max_element(z.begin(), z.end()) - z.begin());
    } else {
      std::iota(order.begin(), order.end(), 0);
      std::sort(order.begin(), order.end(), [&](int32_t x, int32_t y) { return z[x] > z[y]; });
      const size_t keep = top_k > 0 ? std::min<size_t>(static_cast<size_t>(top_k), order.size()) : order.size();
      double sum = 0;
      for (size_t j = 0; j < keep; ++j) sum += probs[j] = std::exp((z[order[j]] - z[order[0]]) / temperature);
      size_t nucleus = keep;  // the smallest prefix holding top_p of the mass
      double acc = 0;
      for (size_t j = 0; j < keep; ++j)
        if ((acc += probs[j] / sum) >= top_p) {
          nucleus = j + 1;
          break;
        }
      double total = 0;
      for (size_t j = 0; j < nucleus; ++j) total += probs[j];
      double u = rng.uniform(static_cast<uint64_t>(i)) * total;
      next = order[nucleus - 1];
      for (size_t j = 0; j < nucleus; ++j)
        if ((u -= probs[j]) <= 0) {
          next = order[j];
          break;
        }
    }
    if (next == tok.eos_id() || next == tok.special_id("<|eot_id|>")) break;
    out.push_back(next);
    if (next >= tok.vocab_size()) break;  // an id the tokenizer cannot spell
    if (i + 1 < max_tokens) logits = &decoder.step(next);
  }
  // Sampled tokens may end inside a character: what is printed is valid UTF-8 all the same.
  std::cout << a.required("prompt", cmd) << data::with_replacement_characters(tok.decode(out)) << "\n";
  return 0;
}

}  // namespace titan::cli
