#include "titan/train/datasets.h"

#include <algorithm>
#include <filesystem>

#include "titan/core/error.h"
#include "titan/data/token_shards.h"

namespace titan::train {

namespace fs = std::filesystem;

namespace {
std::string base(const std::string& p) { return fs::path(p).filename().string(); }

// Splits files by name into train (names holding "train", or all when none do) and validation
// (names holding "validation").
void split_by_name(const std::vector<std::string>& files, DataSetup& d) {
  std::vector<std::string> neither;
  for (const auto& f : files) {
    if (base(f).find("validation") != std::string::npos) d.validation_files.push_back(f);
    else if (base(f).find("train") != std::string::npos) d.train_files.push_back(f);
    else neither.push_back(f);
  }
  if (d.train_files.empty()) {
    d.train_files = files;
    d.validation_files.clear();
  } else {
    d.left_out = std::move(neither);  // the trainer says so: a folder's files are otherwise all expected to train
  }
}

std::vector<std::string> expand(const std::string& spec, const config::JobSettings& cfg, const std::string& key) {
  try {
    return data::expand_data_paths({spec});
  } catch (const UserError& e) {
    throw UserError(concat(cfg.origin(key), ": ", key, ": ", e.what()));
  }
}
}  // namespace

namespace {
// The built-in corpus: data/c4_test of the folder titan runs in (paths are relative to it, as
// torchtitan's are to where it runs), else of the source tree this binary was built in
// (build/<preset>/titan), so the default run works from any folder.
std::string default_corpus_dir() {
  const std::string here = "data/c4_test";
  if (fs::exists(here)) return here;
  std::error_code ec;
  const fs::path self = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    const fs::path tree = self.parent_path().parent_path().parent_path() / here;
    if (fs::exists(tree, ec)) return tree.string();
  }
  return here;  // the error names it
}
}  // namespace

DataSetup resolve_data(const config::JobSettings& cfg) {
  DataSetup d;
  const std::string name = cfg.data.dataset, path = cfg.data.dataset_path;
  if (is_synthetic(name)) {
    d.synthetic = true;
    d.synthetic_kind = name == "synthetic" ? data::SyntheticKind::random : data::SyntheticKind::pattern;
    d.description = name == "synthetic" ? "synthetic (uniform random tokens)" : "synthetic_pattern (period 16)";
  } else if (name == "c4_test") {
    const std::string dir = path.empty() ? default_corpus_dir() : path;
    if (!fs::exists(dir))
      throw UserError(concat(cfg.origin("training.dataset"), ": training.dataset = c4_test: '", dir,
                             "' not found; run scripts/build_default_corpus.sh or set training.dataset_path"));
    split_by_name(expand(dir, cfg, "training.dataset_path"), d);
    d.description = concat("c4_test (", dir, ")");
  } else if (name == "c4") {
    if (path.empty())
      throw UserError(concat(cfg.origin("training.dataset"), ": training.dataset = c4 needs training.dataset_path "
                             "(the folder holding en/c4-train.*.json.gz)"));
    const std::string dir = fs::is_directory(fs::path(path) / "en") ? (fs::path(path) / "en").string() : path;
    split_by_name(expand(dir, cfg, "training.dataset_path"), d);
    d.description = concat("c4 (", dir, ")");
  } else if (path.empty() && data::is_token_shard_dir(name)) {
    d.train_shards = name;
    d.description = concat(name, ": pre-tokenized shards");
  } else {
    if (!path.empty())
      throw UserError(concat(cfg.origin("training.dataset"), ": training.dataset = ", name,
                             ": unknown dataset name (expected c4, c4_test, synthetic or synthetic_pattern; "
                             "or give a path as training.dataset with dataset_path empty)"));
    split_by_name(expand(name, cfg, "training.dataset"), d);
    d.description = name;
  }
  if (!d.synthetic && d.train_shards.empty()) d.description += concat(": ", d.train_files.size(), " training files");
  if (const std::string vpath = cfg.validation.dataset_path; !vpath.empty()) {
    if (data::is_token_shard_dir(vpath)) d.validation_shards = vpath;
    else d.validation_files = expand(vpath, cfg, "validation.dataset_path");
  }
  if (cfg.validation.enabled && d.validation_files.empty() && d.validation_shards.empty() && !d.synthetic)
    throw UserError(concat(cfg.origin("validation.enabled"), ": validation.enabled: no validation files found; "
                           "set validation.dataset_path"));

  d.tokenizer = load_tokenizer(cfg, d.synthetic);
  return d;
}

bool is_synthetic(const std::string& dataset) { return dataset == "synthetic" || dataset == "synthetic_pattern"; }

std::shared_ptr<const data::Tokenizer> load_tokenizer(const config::JobSettings& cfg, bool synthetic) {
  const std::string tok = cfg.model.tokenizer_path;
  if (tok.empty()) return synthetic ? nullptr : std::make_shared<data::Tokenizer>(data::Tokenizer::builtin_default());
  try {
    return std::make_shared<data::Tokenizer>(data::Tokenizer::load(tok));
  } catch (const UserError& e) {
    const bool beside_weights = cfg.source && cfg.source->get_string("model.tokenizer_path").empty();
    throw UserError(beside_weights ? concat(cfg.origin("checkpoint.initial_load_path"), ": the tokenizer.json beside "
                                            "checkpoint.initial_load_path (set model.tokenizer_path to use another): ", e.what())
                                   : concat(cfg.origin("model.tokenizer_path"), ": model.tokenizer_path: ", e.what()));
  }
}

llama3::ModelArgs resolve_model_args(const config::JobSettings& cfg, const DataSetup& data) {
  llama3::ModelArgs a;
  try {
    a = llama3::flavor(cfg.model.flavor);
  } catch (const UserError& e) {
    throw UserError(concat(cfg.origin("model.flavor"), ": ", e.what()));
  }
  if (cfg.model.rope_scaling) a.rope_scaling = *cfg.model.rope_scaling;
  a.tie_word_embeddings = a.tie_word_embeddings || cfg.model.tie_word_embeddings;
  const int64_t vocab = cfg.model.vocab_size;
  if (data.tokenizer) {
    if (vocab > 0 && vocab < data.tokenizer->vocab_size())
      throw UserError(concat(cfg.origin("model.vocab_size"), ": model.vocab_size = ", vocab,
                             " is smaller than the tokenizer's ", data.tokenizer->vocab_size(), " ids"));
    a.vocab_size = vocab > 0 ? vocab : data.tokenizer->vocab_size();
  } else if (vocab > 0) {
    a.vocab_size = vocab;
  }
  if (data.synthetic && a.vocab_size < data::SyntheticStream::kPeriod)
    throw UserError(concat(cfg.origin("model.vocab_size"), ": model.vocab_size = ", a.vocab_size,
                           ": synthetic data needs at least ", data::SyntheticStream::kPeriod, " ids"));
  a.max_seq_len = std::max(a.max_seq_len, cfg.plan.micro_batch.seq);
  a.validate(cfg.origin("model.flavor") + ": model." + cfg.model.flavor);
  return a;
}

std::unique_ptr<data::WindowSource> make_train_source(const DataSetup& d, const config::JobSettings& cfg,
                                                      int64_t vocab, data::Logger log) {
  const int64_t window = cfg.plan.micro_batch.seq + 1;
  if (d.synthetic)
    return data::make_synthetic_source(d.synthetic_kind, vocab, cfg.data.seed,
                                       window);
  if (!d.train_shards.empty()) return data::make_shard_source(d.train_shards, d.tokenizer->fingerprint(), window);
  data::SourceOptions opts{cfg.data.dataset_field, cfg.data.skip_bad_records};
  return data::make_text_source(d.train_files, opts, d.tokenizer, window, std::move(log));
}

std::unique_ptr<data::WindowSource> make_validation_source(const DataSetup& d, const config::JobSettings& cfg,
                                                           int64_t vocab) {
  const int64_t window = cfg.plan.micro_batch.seq + 1;
  if (d.synthetic && d.validation_files.empty() && d.validation_shards.empty())  // held-apart synthetic windows: another seed
    return data::make_synthetic_source(d.synthetic_kind, vocab,
                                       cfg.data.seed + 0x5eed, window);
  data::SourceOptions opts{cfg.data.dataset_field, cfg.data.skip_bad_records};
  auto tok = d.tokenizer ? d.tokenizer : std::make_shared<data::Tokenizer>(data::Tokenizer::builtin_default());
  if (!d.validation_shards.empty()) return data::make_shard_source(d.validation_shards, tok->fingerprint(), window);
  return data::make_text_source(d.validation_files, opts, tok, window, nullptr);
}

}  // namespace titan::train
