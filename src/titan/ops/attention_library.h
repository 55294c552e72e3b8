// Which attention the CUDA backend runs, and what cuDNN's costs, known to host code in any
// build (titan estimate sizes cuDNN's scratch without a GPU or a CUDA build).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace titan {

// auto: cuDNN where it loads and plans the shape, titan's kernels otherwise; titan: titan's
// kernels only; cudnn: cuDNN for the shapes it takes (failing to load it or to plan one of those
// shapes is an error). A run takes training.attention (config/run_plan.cpp), which
// TITAN_ATTENTION_IMPL overrides where set; a deterministic run keeps titan's kernels.
enum class AttentionLibrary { titan, cudnn, automatic };
// TITAN_ATTENTION_IMPL's value (auto when unset); UserError for any other word.
AttentionLibrary attention_library_from_env();

// The shapes titan gives cuDNN: head_dim 64 or 128 and seq a multiple of 128 (through 9.15 other
// key lengths need a padding mask in the backward graph, and were reported to fault under graph
// replay), whole groups of query heads per key head.
bool cudnn_attention_takes(int64_t seq, int64_t heads, int64_t kv_heads, int64_t head_dim);

// The fp32 scratch cuDNN's backward keeps per shape: the dQ accumulator, then (16-byte aligned)
// the softmax row sums.
size_t cudnn_dq_accumulator_bytes(int64_t batch, int64_t seq, int64_t heads, int64_t head_dim);
size_t cudnn_attention_scratch_bytes(int64_t batch, int64_t seq, int64_t heads, int64_t head_dim);

}  // namespace titan
