// From the config's dataset keys to a tokenizer and window sources for training and validation.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "titan/config/job_settings.h"
#include "titan/data/tokenizer.h"
#include "titan/data/window_source.h"
#include "titan/models/llama3/model_args.h"

namespace titan::train {

struct DataSetup {
  std::shared_ptr<const data::Tokenizer> tokenizer;  // null for synthetic data without tokenizer_path
  std::vector<std::string> train_files, validation_files;
  std::string train_shards, validation_shards;  // pre-tokenized directories, when given
  bool synthetic = false;
  data::SyntheticKind synthetic_kind = data::SyntheticKind::random;
  std::string description;  // one line for the start-up log
  std::vector<std::string> left_out;  // files of the dataset folder that neither train nor validate
};

// Resolves training.dataset / dataset_path / validation.dataset_path and loads the tokenizer.
// Throws UserError naming the key when something is missing or malformed.
DataSetup resolve_data(const config::JobSettings& cfg);

// training.dataset names synthetic data (no files, no tokenizer needed).
bool is_synthetic(const std::string& dataset);
// The tokenizer a run reads: model.tokenizer_path's (or the Hugging Face folder's), else the
// built-in one, else none for synthetic data. UserError naming the key when it cannot be read.
std::shared_ptr<const data::Tokenizer> load_tokenizer(const config::JobSettings& cfg, bool synthetic);
// The flavor's shapes with the vocabulary from, in order: model.vocab_size, the tokenizer, the
// flavor's; UserError naming the key for a vocabulary the tokenizer or synthetic data cannot use.
llama3::ModelArgs resolve_model_args(const config::JobSettings& cfg, const DataSetup& data);

// A fresh stream over the training (or validation) data, windows of seq_len + 1 tokens.
std::unique_ptr<data::WindowSource> make_train_source(const DataSetup& d, const config::JobSettings& cfg,
                                                      int64_t vocab, data::Logger log);
std::unique_ptr<data::WindowSource> make_validation_source(const DataSetup& d, const config::JobSettings& cfg,
                                                           int64_t vocab);

}  // namespace titan::train
