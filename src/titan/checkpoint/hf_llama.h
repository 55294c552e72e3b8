// Hugging Face Llama checkpoints: key names, the RoPE row permutation of wq/wk (Meta's
// interleaved pairs vs HF's half-split), config.json. Export writes model.safetensors +
// config.json; import reads them (single file or an index of shards).
#pragma once
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "titan/core/parameter.h"
#include "titan/data/tokenizer.h"
#include "titan/models/llama3/layout.h"
#include "titan/models/llama3/model_args.h"

namespace titan::checkpoint {

// "layers.3.attention.wq.weight" -> "model.layers.3.self_attn.q_proj.weight"; "" if none.
std::string hf_name(const std::string& titan_name);
// Rows of a [heads * head_dim, cols] projection, per head: Meta (2i, 2i+1) <-> HF (i, i + head_dim/2).
void permute_rope_rows(const float* in, float* out, int64_t heads, int64_t head_dim, int64_t cols, bool to_hf);

// Writes dir/model.safetensors (float32 or bfloat16) and dir/config.json (LlamaForCausalLM).
// max_shard_bytes > 0: weights over that size are split into shards with an index, as Meta
// publishes them (5 GB each).
void export_hf(const std::deque<Parameter>& params, const llama3::ModelArgs& args, const std::string& dir,
               bool bf16, int32_t bos_id, int32_t eos_id, int64_t max_shard_bytes = 0);

// The tokenizer a run trained with, beside an export: a tokenizer.json is copied with a
// tokenizer_config.json naming its begin/end-of-text tokens (what transformers' AutoTokenizer
// reads); a tiktoken file (the built-in one included) goes to original/tokenizer.model, where
// Meta's folders keep theirs. `path` empty: the built-in tokenizer.
void export_hf_tokenizer(const std::string& dir, const std::string& path, const data::Tokenizer& tok);

struct HfModel {
  llama3::ModelArgs args;
  std::string flavor;                                 // the titan flavor with this shape
  std::map<std::string, std::vector<float>> weights;  // titan names, Meta RoPE layout
};
// Reads an HF Llama folder (one model.safetensors, or shards listed by model.safetensors.index.json),
// with Llama 3.1's rope_scaling ("llama3"). Refuses, naming the key, what titan would load
// wrongly: other rope_scaling types, tied embeddings (Llama 3.2 1B/3B), biases, other
// architectures, shapes of no titan flavor.
HfModel import_hf(const std::string& dir);
// The same in two parts, for a caller that keeps only some rows (an FSDP rank): the shapes and
// settings from config.json (no weights), then each tensor, converted to fp32 in Meta's RoPE
// layout, handed to `sink` one at a time and one file at a time (it may take the vector).
HfModel read_hf_config(const std::string& dir);
void for_each_hf_weight(const std::string& dir, const llama3::ModelArgs& args,
                        const std::function<void(const llama3::TensorSpec&, std::vector<float>&)>& sink);

}  // namespace titan::checkpoint
