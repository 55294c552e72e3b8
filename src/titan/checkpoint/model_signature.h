// What a checkpoint must match to load: the model's shape, tokenizer and dtype, as JSON in
// metadata.json. Written by training and `titan convert`, read by resume, inspect and generate.
#pragma once
#include <string>

#include "titan/models/llama3/model_args.h"

namespace titan::checkpoint {

// `tokenizer`: the tokenizer's fingerprint, "none" (synthetic data) or "unknown" (imported).
std::string model_signature(const llama3::ModelArgs& args, const std::string& flavor, const std::string& tokenizer);
// The shape back from a signature; UserError naming `where` when malformed or inconsistent.
llama3::ModelArgs args_from_signature(const std::string& signature, const std::string& where);

}  // namespace titan::checkpoint
