// The one description of the Llama 3 model's tensors: name, shape, unit, init rule, Hugging
// Face name, and room for a tensor-parallel style and a precision per linear. The model, init,
// checkpoints, the HF import/export, FLOP counting, the memory estimate and the CUDA mirror all
// read this table; nothing else knows the order of parameters.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "titan/core/tensor.h"
#include "titan/models/llama3/init.h"
#include "titan/models/llama3/model_args.h"
#include "titan/ops/backend.h"

namespace titan::llama3 {

// What a tensor is in the model. The block roles come first, in the table's order within a block.
enum class Role { wq, wk, wv, wo, w1, w2, w3, attention_norm, ffn_norm, tok_embeddings, norm, output };
constexpr int kBlockRoles = 9;  // wq .. ffn_norm

// Tensor parallel placement (torchtitan's ColwiseParallel / RowwiseParallel; vocab: the
// embedding sharded over its rows; replicate: every TP rank holds it whole, as the norms).
enum class TpStyle { replicate, colwise, rowwise, vocab };

// A rank's place in its tensor-parallel group: the layout then gives each tensor the slice
// that rank holds (rows for colwise and vocab, columns for rowwise), in rank order.
struct TensorParallelRank {
  int rank = 0, degree = 1;
};

struct TensorSpec {
  std::string name;     // torchtitan's fully-qualified name: layers.3.attention.wq.weight
  std::string hf_name;  // Hugging Face's: model.layers.3.self_attn.q_proj.weight
  Shape shape;        // what this rank holds: the whole tensor, or its tensor-parallel slice
  Shape whole_shape;  // the model's tensor
  int64_t row_offset = 0, col_offset = 0;  // where `shape` sits in it
  Role role;
  int64_t layer = -1;  // -1: a root tensor
  int unit = 0;        // FSDP unit: 0 the root (embedding, final norm, output), 1 + layer a block
  InitRule init;
  int64_t rope_heads = 0;  // wq/wk: heads whose rows HF stores half-split (checkpoint/hf_llama)
  TpStyle tp = TpStyle::replicate;
  LinearPrecision precision = LinearPrecision::none;  // none: not a GEMM weight; float8: set by float8_linears
  // Its gradient is summed into (embedding rows, norm weights) rather than written by one GEMM:
  // a step that writes each GEMM weight's gradient once must still clear these.
  bool summed_gradient = false;
  int64_t numel() const { return shape_numel(shape); }
  bool sliced() const { return shape != whole_shape; }
};

class ModelLayout {
 public:
  // `tp`: the slices of this tensor-parallel rank; its degree must divide the heads, the KV
  // heads, the feed-forward width and the vocabulary (checked where the config is read).
  explicit ModelLayout(const ModelArgs& args, TensorParallelRank tp = {});
  const TensorParallelRank& tensor_parallel() const { return tp_; }
  const std::vector<TensorSpec>& tensors() const { return tensors_; }
  size_t size() const { return tensors_.size(); }
  const TensorSpec& operator[](size_t i) const { return tensors_[i]; }
  // Position of a block tensor of `layer`, or of a root tensor (with tied embeddings the output's
  // is the embedding's).
  size_t block_index(int64_t layer, Role role) const;
  size_t root_index(Role role) const;
  // Position of `name`; -1 when the model has no such tensor.
  int64_t find(const std::string& name) const;
  int units() const { return static_cast<int>(n_layers_) + 1; }
  // Positions of each unit's tensors, unit by unit.
  std::vector<std::vector<size_t>> unit_tensors() const;
  // Elements of all tensors, of one unit, and of the embedding (torchtitan excludes it from FLOPs).
  int64_t numel() const;
  int64_t unit_numel(int unit) const;
  int64_t embedding_numel() const { return tensors_[root_index(Role::tok_embeddings)].numel(); }
  // A GEMM weight's recipe (precision applied from outside: models/llama3/float8_linears).
  void set_precision(size_t i, LinearPrecision p);

 private:
  std::vector<TensorSpec> tensors_;
  TensorParallelRank tp_;
  int64_t n_layers_ = 0;
  std::vector<std::array<size_t, kBlockRoles>> block_;  // [layer][role]
  size_t embedding_ = 0, norm_ = 0, output_ = 0;
};

// Hugging Face's name of a torchtitan name ("" when it has none), from the name alone.
std::string hf_name_of(const std::string& titan_name);

}  // namespace titan::llama3
